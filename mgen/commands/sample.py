"""`mgen sample`: sample images from a named model or weights."""

from __future__ import annotations

import argparse

from mgen.errors import UserError

HELP = "sample images from a named model or weights"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    raise UserError("'mgen sample' is not available yet in this version of mgen")
