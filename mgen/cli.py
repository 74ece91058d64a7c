"""The ``mgen`` command line: parses arguments and calls pipelines, the trainer and the evaluator.

Every error a user can cause ends in one line on stderr and exit status 2 (DESIGN.md, Conventions).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from mgen.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage dump) and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


# Each subcommand registers (help, add_arguments, run). Later capabilities replace the placeholders.
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str):
    def wrap(fn_args: Callable[[argparse.ArgumentParser], None]):
        def register(run: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (help, fn_args, run)
            return run
        return register
    return wrap


def _not_yet(what: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise UserError(f"'mgen {what}' is not available yet in this version of mgen")
    return run


# --- info ----------------------------------------------------------------------------------------
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def _info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from mgen import __version__, hub, registry
    from mgen.nn.attention import available_backends, resolve_backend

    rows = []
    for e in registry.list_models():
        found = hub.find_weights(e)
        places = hub.candidates(e)
        where = str(found) if found else ("; ".join(c.label for c in places) or "-")
        rows.append({"name": e.name, "family": e.family, "params": e.num_params or "?",
                     "tokenizer": e.tokenizer or "-", "weights": where, "present": found is not None})
    if args.json:
        print(json.dumps({"version": __version__, "models": rows}, indent=2))
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"mgen {__version__} | torch {torch.__version__} | python {platform.python_version()} | device {device} | "
          f"attention {resolve_backend()} (available: {', '.join(available_backends())})")
    print(f"weights home: {hub.mgen_home()}  (set MGEN_HOME to change)")
    print()
    cols = ["name", "family", "params", "tokenizer", "present", "weights"]
    table = [[str(r[c]) if c != "present" else ("yes" if r[c] else "no") for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
    return 0


# --- train ---------------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a model YAML (configs/NAME.yaml) or a registered name")
    p.add_argument("--out", default=None, help="output folder for checkpoints, logs and sample grids")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mgen import registry
    from mgen.train.tasks import build_training

    entry = registry.load_config_file(args.config) if Path(args.config).suffix in (".yaml", ".yml") else registry.get(args.config)
    run = build_training(entry, out_dir=args.out, max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed)
    run.train(resume=not args.no_resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mgen import __version__

    parser = _Parser(prog="mgen", description="mgen: masked and diffusion decoding (MAR, MaskGIT, ENAT, DiT/RAE, DLMs) and FID evaluation.")
    parser.add_argument("--version", action="version", version=f"mgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", parser_class=_Parser)
    for name, (help_text, add_args, _) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
    return parser


def _no_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


COMMANDS.update({
    "sample": ("sample images from a named model or weights", _no_args, _not_yet("sample")),
    "train": ("train a model from its YAML config with the shared accelerate trainer", _train_args, _train),
    "eval": ("FID / IS / KID / precision-recall of samples or a model", _no_args, _not_yet("eval")),
    "convert": ("convert official checkpoints to safetensors pipeline folders", _no_args, _not_yet("convert")),
    "info": ("list the named models, their weights and the environment", _info_args, _info),
    "bench": ("benchmarks: speed and memory measured on this machine", _no_args, _not_yet("bench")),
})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(COMMANDS[args.command][2](args) or 0)
    except UserError as e:
        sys.stderr.write(f"mgen {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mgen: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
