"""`mgen bench`: benchmarks: speed and memory measured on this machine."""

from __future__ import annotations

import argparse

from mgen.errors import UserError

HELP = "benchmarks: speed and memory measured on this machine"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    raise UserError("'mgen bench' is not available yet in this version of mgen")
