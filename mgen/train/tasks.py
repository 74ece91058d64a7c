"""Training builders by family, read from the families table (``Family.train``): each family contributes a builder
``builder(entry, **overrides) -> Trainer`` that feeds its task (its loss and sample-grid hook) and its data to the one
trainer (:class:`mgen.train.trainer.Trainer`), never its own loop (docs/ARCHITECTURE.md, "Training")."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from mgen.errors import UserError
from mgen.families import get_family
from mgen.registry import ModelEntry
from mgen.train.trainer import Trainer

# Builders registered by modules that predate the families table's ``train`` entries (transitional).
BUILDERS: dict[str, Callable[..., Trainer]] = {}


def register(family: str):
    def wrap(fn: Callable[..., Trainer]) -> Callable[..., Trainer]:
        BUILDERS[family] = fn
        return fn
    return wrap


def builder_for(entry: ModelEntry) -> Callable[..., Trainer]:
    """The family's training builder (``Family.train``, ``"module:function"``)."""
    fam = get_family(entry.family)
    if fam.train is None:
        raise UserError(f"training for the {fam.name!r} family ({entry.name}) is not available in this version of mgen")
    module, _, attr = fam.train.partition(":")
    mod = importlib.import_module(module)
    fn = getattr(mod, attr, None) or BUILDERS.get(fam.name)
    if fn is None:
        raise UserError(f"training for the {fam.name!r} family ({entry.name}) is not available in this version of mgen")
    return fn


def build_training(entry: ModelEntry, **overrides: Any) -> Trainer:
    return builder_for(entry)(entry, **overrides)
