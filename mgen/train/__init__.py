"""The shared accelerate trainer, EMA, and the registry of per-family training tasks."""

from mgen.train.ema import EMA
from mgen.train.trainer import TrainConfig, Trainer, TrainTask

__all__ = ["EMA", "TrainConfig", "Trainer", "TrainTask"]
