"""`mgen eval`: FID / IS / KID / precision-recall of samples or a model."""

from __future__ import annotations

import argparse

from mgen.errors import UserError

HELP = "FID / IS / KID / precision-recall of samples or a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    raise UserError("'mgen eval' is not available yet in this version of mgen")
