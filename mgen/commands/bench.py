"""`mgen bench NAME …`: benchmarks measured on this machine; each writes JSON and a markdown table.

Every benchmark is a module of :mod:`mgen.bench` (``mgen/bench/NAME.py``) with ``add_arguments(parser)`` and
``run(args) -> result``; the module writes its report through :func:`mgen.bench.report.write_report` (which records
the machine) and this command prints the result's rows.

    mgen bench sample --model mar-digits --steps 16 --batch-size 16
    mgen bench sample --model mar-b --random-weights --steps 16 --batch-size 8 --dtype bf16
    mgen bench fid | recap | enat | joint | joint-exact | joint-frontier …
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from mgen.bench.report import markdown_table
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


def _module(name: str) -> Any:
    return importlib.import_module(BENCHES[name])


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="{" + ",".join(BENCHES) + "}", parser_class=type(p))
    for name in BENCHES:
        mod = _module(name)
        sp = sub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        mod.add_arguments(sp)
        if "--no-progress" not in sp._option_string_actions:
            sp.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "bench", None)
    if name is None:
        raise UserError(f"usage: mgen bench {{{','.join(BENCHES)}}} ... (see mgen bench --help)")
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
