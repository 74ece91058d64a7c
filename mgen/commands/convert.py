"""`mgen convert KIND SRC OUT`: official checkpoints → safetensors folders that ``from_pretrained`` loads.

The kinds come from the families table (:func:`mgen.families.converters`): each converter lives next to the model
it loads and has the signature ``fn(src, out, force=False, **opts)``; it builds ``out`` in a temporary sibling
folder and renames it into place (``mgen.fileio.atomic_dir``), so a killed run leaves no half-written folder and
``--force`` replaces only a folder mgen wrote. ``--opt key=value`` pairs are the converter's options.

Progress: a tqdm bar on stderr over the two stages of every conversion, reading (each checkpoint the converter
loads through :func:`mgen.hub.load_checkpoint` is counted in the bar: files, tensors, bytes) and converting +
writing (done when the converter returns; the bar then names what was written). ``--no-progress`` silences it, as
in ``mgen sample`` / ``mgen bench``; without a terminal on stderr it is not drawn.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mgen.errors import UserError
from mgen.families import converters, import_target
from mgen.hub import count_tensors, observe_loads

HELP = "convert official checkpoints to safetensors pipeline folders"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", help="what to convert: one of the kinds listed by `mgen convert --list`")
    p.add_argument("src", nargs="?", help="the official checkpoint file")
    p.add_argument("out", nargs="?", help="output folder (created; must not already hold a model)")
    p.add_argument("--list", action="store_true", help="list the known kinds and exit")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="converter option (repeatable), e.g. --opt scaling_factor=0.2325")
    p.add_argument("--force", action="store_true", help="replace an existing output folder that mgen wrote")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def parse_opts(pairs: list[str]) -> dict[str, Any]:
    import yaml

    opts: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise UserError(f"--opt {pair!r}: expected KEY=VALUE")
        k, v = pair.split("=", 1)
        try:
            opts[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            opts[k.strip()] = v
    return opts


def check_options(kind: str, fn: Any, opts: dict[str, Any]) -> None:
    """Refuse options the converter does not take, naming the ones it does."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if n not in ("src", "out", "force") and p.kind is not p.VAR_POSITIONAL]
    bad = sorted(set(opts) - set(allowed))
    if bad:
        raise UserError(f"convert {kind}: unknown option{'s' if len(bad) > 1 else ''} {', '.join(bad)}; "
                        f"allowed: {', '.join(allowed) or 'none'}")


def run(args: argparse.Namespace) -> int:
    table = converters()
    if args.list or args.kind is None:
        for kind, (desc, _) in table.items():
            print(f"{kind:18s} {desc}")
        if args.kind is None and not args.list:
            raise UserError("usage: mgen convert KIND SRC OUT (kinds listed above)")
        return 0
    if args.kind not in table:
        raise UserError(f"unknown conversion {args.kind!r}; known: {', '.join(table)}")
    if args.src is None or args.out is None:
        raise UserError(f"usage: mgen convert {args.kind} SRC OUT")
    src, out = Path(args.src).expanduser(), Path(args.out).expanduser()
    if not src.exists():
        raise UserError(f"{src}: no such file")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if any(p.is_file() for p in out.parents if p.exists() and p != out):
        raise UserError(f"{out}: a parent of this path is a regular file")
    from mgen.fileio import is_mgen_output

    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            raise UserError(f"{out}: already exists (pass --force to overwrite)")
        if not is_mgen_output(out):
            raise UserError(f"{out}: holds files mgen did not write; refusing to replace it (choose another folder)")
    opts = parse_opts(args.opt)
    fn = import_target(table[args.kind][1])
    check_options(args.kind, fn, opts)
    if "force" in inspect.signature(fn).parameters:
        opts["force"] = bool(args.force)
    with progress_bar(args.kind, disable=True if args.no_progress else None) as bar:
        read = {"files": 0, "tensors": 0, "bytes": 0}

        def on_load(path: Path, obj: dict[str, Any]) -> None:
            n, size = count_tensors(obj)
            read["files"], read["tensors"], read["bytes"] = read["files"] + 1, read["tensors"] + n, read["bytes"] + size
            if bar.n == 0:
                bar.update(1)
                bar.set_description(f"convert {args.kind}: converting + writing")
            bar.set_postfix_str(f"read {read['files']} file(s), {read['tensors']} tensors, {_size(read['bytes'])}")

        with observe_loads(on_load):
            fn(src, out, **opts)
        bar.update(bar.total - bar.n)
        written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
        bar.set_description(f"convert {args.kind}: done")
        bar.set_postfix_str(f"wrote {len(written)} file(s), {_size(sum(p.stat().st_size for p in written))}")
    print(f"wrote {out}")
    return 0


def progress_bar(kind: str, disable: bool | None) -> tqdm:
    """The conversion's bar: 2 stages (read; convert + write), on stderr, hidden by ``--no-progress``.

    ``disable=None`` (no ``--no-progress``): tqdm shows it only when stderr is a terminal, so an error a converter
    raises stays the one line ``mgen.cli`` prints in logs and pipes (the bar's ``\r`` redraws would precede it)."""
    return tqdm(total=2, desc=f"convert {kind}: reading", unit="stage", disable=disable, leave=False,
                dynamic_ncols=True)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
