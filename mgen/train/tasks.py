"""Transitional home of training builders registered by name (``register``); :func:`build_training` is the
generic builder of :mod:`mgen.train.builder`, which reads the families table (docs/ARCHITECTURE.md, "Training")."""

from __future__ import annotations

from typing import Any, Callable

from mgen.registry import ModelEntry
from mgen.train.builder import build_trainer
from mgen.train.trainer import Trainer

BUILDERS: dict[str, Callable[..., Trainer]] = {}


def register(family: str):
    """Kept for modules that still register a builder by family name; the families table's ``train`` wins."""
    def wrap(fn: Callable[..., Trainer]) -> Callable[..., Trainer]:
        BUILDERS[family] = fn
        return fn
    return wrap


def build_training(entry: ModelEntry, **overrides: Any) -> Trainer:
    return build_trainer(entry, **overrides)
