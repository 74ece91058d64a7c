"""`mgen bench NAME …`: benchmarks measured on this machine; each writes JSON and a markdown table.

Every benchmark is a module of :mod:`mgen.bench` (``mgen/bench/NAME.py``) with ``add_arguments(parser)`` and
``run(args) -> result``; the module writes its report through :func:`mgen.bench.report.write_report` (which records
the machine) and this command prints the result's rows.

    mgen bench sample --model mar-digits --steps 16 --batch-size 16
    mgen bench sample --model mar-b --random-weights --steps 16 --batch-size 8 --dtype bf16
    mgen bench fid | recap | enat | joint | joint-exact | joint-frontier …
    mgen bench recap --model maskgit-digits --quality-samples 300 --plot     # + recap-maskgit-digits.png
    mgen bench plot benchmarks/recap/recap-maskgit-digits.json [--out PNG]   # a chart of a result, no re-run

``--plot`` (where a benchmark offers it) and ``mgen bench plot`` need matplotlib (``pip install 'mgen[plot]'``);
without it they are refused in one line before any benchmark work runs. ``mgen bench plot`` dispatches on the
result's ``meta.bench`` to that benchmark module's ``chart(result, path)``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from mgen.bench.report import markdown_table, read_result, require_plot
from mgen.errors import UserError

HELP = "benchmarks (speed, memory, quality) measured on this machine; writes JSON + a markdown table"

#: benchmark name -> its module (``add_arguments``, ``run``); the first docstring line is its help
BENCHES: dict[str, str] = {
    "sample": "mgen.bench.sample",
    "fid": "mgen.bench.fid",
    "recap": "mgen.bench.recap",
    "enat": "mgen.bench.enat",
    "joint": "mgen.bench.joint",
    "joint-exact": "mgen.bench.joint_exact",
    "joint-frontier": "mgen.bench.joint_frontier",
}


#: the subcommand that draws a chart of an existing result (not a benchmark)
PLOT = "plot"


def _module(name: str) -> Any:
    return importlib.import_module(BENCHES[name])


def charted_benches() -> list[str]:
    """The benchmarks whose module offers ``chart(result, path)`` (what ``mgen bench plot`` can draw)."""
    return [n for n in BENCHES if callable(getattr(_module(n), "chart", None))]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="{" + ",".join([*BENCHES, PLOT]) + "}", parser_class=type(p))
    for name in BENCHES:
        mod = _module(name)
        sp = sub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        mod.add_arguments(sp)
        if "--no-progress" not in sp._option_string_actions:
            sp.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    sp = sub.add_parser(PLOT, help=f"draw the chart of an existing result JSON ({', '.join(charted_benches())}) without "
                                   "re-running it (needs matplotlib)")
    sp.add_argument("result", help="a result JSON written by mgen bench (its meta.bench says which benchmark)")
    sp.add_argument("--out", default=None, help="the PNG to write (default: beside the JSON, same name, .png)")


def plot_result(path: str, out: str | None = None) -> Path:
    """Chart of the result JSON ``path`` (kind: its ``meta.bench``) by that benchmark module's ``chart``; written
    to ``out`` or beside the JSON. Not a result, a benchmark without a chart, rows a chart cannot use: one
    UserError, and no PNG is written."""
    require_plot("mgen bench plot")
    kind, result = read_result(path)
    mod = _module(kind) if kind in BENCHES else None
    chart = getattr(mod, "chart", None)
    if not callable(chart):
        raise UserError(f"{path}: a {kind!r} result has no chart (charts exist for: {', '.join(charted_benches())})")
    target = Path(out).expanduser() if out else Path(path).expanduser().with_suffix(".png")
    return chart(result, target)


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "bench", None)
    if name is None:
        raise UserError(f"usage: mgen bench {{{','.join([*BENCHES, PLOT])}}} ... (see mgen bench --help)")
    if name == PLOT:
        print(f"wrote {plot_result(args.result, args.out)}")
        return 0
    if getattr(args, "plot", False):
        require_plot(f"mgen bench {name} --plot")  # refused before any benchmark work runs
    result = _module(name).run(args)
    rows = result.get("rows") if isinstance(result, dict) else None
    if rows:
        print(markdown_table(rows), end="")
    elif isinstance(result, dict):
        for k, v in result.items():
            if not isinstance(v, (dict, list)):
                print(f"{k:24s} {v}")
    for path in (result.get("written") or []) if isinstance(result, dict) else []:
        print(f"wrote {path}")
    return 0
