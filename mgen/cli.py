"""The ``mgen`` command line: parses arguments and calls pipelines, the trainer and the evaluator.

Each subcommand lives in ``mgen/commands/<name>.py`` (``HELP``, ``add_arguments``, ``run``) and is
imported only when used, so ``mgen --help`` stays fast. Every error a user can cause ends in one line
on stderr and exit status 2 (docs/ARCHITECTURE.md, "Errors and files").
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from mgen.commands import NAMES
from mgen.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage dump) and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def one_line(message: str) -> str:
    """An error message as one line (newlines folded)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip()) or "error"


def _quiet_libraries() -> None:
    """diffusers / transformers log to stderr and draw their own loading bars; the CLI reports errors itself in
    one line and shows its own progress, so their loggers are silenced below CRITICAL (``MGEN_DEBUG=1`` keeps them)."""
    import logging

    for name in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity(logging.CRITICAL)
        diffusers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - diffusers is a dependency
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity(logging.CRITICAL)
        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _module(name: str):
    return importlib.import_module(f"mgen.commands.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that subcommand's arguments are built (faster start-up)."""
    from mgen import __version__

    parser = _Parser(prog="mgen", description="mgen: masked and diffusion decoding (MAR, MaskGIT, ENAT, DiT/RAE, "
                                              "diffusion LMs) and FID evaluation.")
    parser.add_argument("--version", action="version", version=f"mgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(NAMES) + "}", parser_class=_Parser)
    for name in NAMES:
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        mod = _module(name)
        sp = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in NAMES else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a usage error already reported in one line (2)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help()
        return 0
    debug = os.environ.get("MGEN_DEBUG", "") not in ("", "0")
    if not debug:
        _quiet_libraries()
    try:
        return int(_module(args.command).run(args) or 0)
    except UserError as e:
        if debug:
            raise
        sys.stderr.write(f"mgen {args.command}: error: {one_line(str(e))}\n")
        return 2
    except BrokenPipeError:  # e.g. `mgen info | head`: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the machine said no (full disk, permissions, read-only folder …): the user can fix it
        if debug or e.errno is None:
            raise
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"mgen {args.command}: error: {where}{e.strerror or e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mgen: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
