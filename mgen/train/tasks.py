"""Registry of training tasks by model family: each family contributes a builder, never its own loop."""

from __future__ import annotations

from typing import Any, Callable

from mgen.errors import UserError
from mgen.registry import ModelEntry
from mgen.train.trainer import Trainer

# family -> builder(entry, **overrides) -> Trainer ; filled in by the model modules' issues.
BUILDERS: dict[str, Callable[..., Trainer]] = {}


def register(family: str):
    def wrap(fn: Callable[..., Trainer]) -> Callable[..., Trainer]:
        BUILDERS[family] = fn
        return fn
    return wrap


def _load_builders() -> None:
    """Import the modules that register builders (kept lazy so `mgen --help` stays fast)."""
    import importlib

    for mod in ("mgen.models.mar", "mgen.models.maskgit", "mgen.models.enat", "mgen.models.dit", "mgen.models.lightningdit", "mgen.models.dlm",
                "mgen.tokenizers.kl", "mgen.tokenizers.vq", "mgen.tokenizers.rae"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def build_training(entry: ModelEntry, **overrides: Any) -> Trainer:
    _load_builders()
    if entry.family not in BUILDERS:
        raise UserError(f"training for the {entry.family!r} family ({entry.name}) is not available yet in this version of mgen")
    return BUILDERS[entry.family](entry, **overrides)
