"""The one generic trainer builder: a family feeds it its task, its data and its settings.

The families table names, for each trainable family, a function ``fn(entry, factory) -> (task, data, config)``
next to the model (``Family.train``). The model module does not import :mod:`mgen.train` (a lower layer never
imports a higher one): it receives a :class:`TrainerFactory`, asks it for the :class:`TrainConfig` of its settings
(``factory.config(settings)``, with the command line's overrides applied) and, for a family that trains in stages
(RAE pretrains its encoder first), runs the earlier stage through ``factory.pretrain(task, data, config)``. This
builder then puts the returned task, data and config into the one :class:`~mgen.train.trainer.Trainer`
(docs/ARCHITECTURE.md, "Training").
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from mgen.errors import UserError
from mgen.families import get_family, import_target
from mgen.registry import ModelEntry
from mgen.train import data
from mgen.train.trainer import TrainConfig, Trainer


class TrainerFactory:
    """What a family's training function may ask of the trainer layer."""

    def __init__(self, entry: ModelEntry, out_dir: str | None = None, max_steps: int | None = None,
                 batch_size: int | None = None, seed: int | None = None) -> None:
        self.entry = entry
        self.out_dir = out_dir or f"runs/{entry.name}"
        self.overrides = {"max_steps": max_steps, "batch_size": batch_size, "seed": seed}
        #: the training data preparation (:mod:`mgen.train.data`): digits images, codes, latents, text windows
        self.data = data

    def config(self, settings: Mapping[str, Any], out_dir: str | None = None, command_line: bool = True) -> TrainConfig:
        """The trainer settings of ``settings`` (a ``train:`` mapping without the family's own keys); the command
        line's ``--max-steps`` / ``--batch-size`` / ``--seed`` apply unless ``command_line`` is False (a stage
        with its own step count)."""
        extra = {k: v for k, v in self.overrides.items() if v is not None} if command_line else {}
        if not command_line and self.overrides.get("seed") is not None:
            extra["seed"] = self.overrides["seed"]
        return TrainConfig.from_mapping(dict(settings), out_dir=out_dir or self.out_dir, **extra)

    def pretrain(self, task: Any, data: Any, config: TrainConfig) -> nn.Module:
        """Run an earlier training stage to its end (resuming a killed one) and return its trained model."""
        trainer = Trainer(task, data, config)
        trainer.train(resume=True)
        return trainer.unwrapped


def build_trainer(entry: ModelEntry, out_dir: str | None = None, max_steps: int | None = None,
                  batch_size: int | None = None, seed: int | None = None) -> Trainer:
    """The trainer of a registry entry: its family's task, data and settings in the one training loop."""
    fam = get_family(entry.family)
    if fam.train is None:
        raise UserError(f"training for the {fam.name!r} family ({entry.name}) is not available in this version of mgen")
    task, data, config = import_target(fam.train)(entry, TrainerFactory(entry, out_dir, max_steps, batch_size, seed))
    return Trainer(task, data, config)
