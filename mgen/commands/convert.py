"""`mgen convert`: convert official checkpoints to safetensors pipeline folders."""

from __future__ import annotations

import argparse

from mgen.errors import UserError

HELP = "convert official checkpoints to safetensors pipeline folders"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    raise UserError("'mgen convert' is not available yet in this version of mgen")
