"""``build_training(entry, **overrides)``: the name the recipes and ``mgen train`` use for the one generic builder,
:func:`mgen.train.builder.build_trainer` (docs/ARCHITECTURE.md, "Training")."""

from __future__ import annotations

from mgen.train.builder import build_trainer as build_training

__all__ = ["build_training"]
