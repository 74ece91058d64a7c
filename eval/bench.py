"""Moved to :mod:`mgen.bench.fid` (``mgen bench fid``). This shim keeps the old entry points that
``mgen/commands/bench.py`` still imports working until it imports ``mgen.bench.fid`` itself; then delete it
(it is the one place where ``mgen.eval`` reaches up into ``mgen.bench``)."""

from __future__ import annotations

import argparse
from typing import Any

from mgen.bench.fid import add_arguments as add_args  # noqa: F401


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The old flat record of :func:`mgen.bench.fid.run` (meta + one ``<side>_images_per_s`` per row)."""
    from mgen.bench.fid import run as run_fid

    r = run_fid(args)
    flat = {k: v for k, v in r["meta"].items() if k != "machine"}
    for row in r["rows"]:
        side = row["side"].replace("-", "_")
        flat[f"{side}_images_per_s"] = row["images_per_s"]
        flat[f"median_s_{side}"] = row["median_s"]
    return flat
