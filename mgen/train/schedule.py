"""Learning-rate schedules of the trainer: transformers' own warm-up + constant / warm-up + cosine schedules.

``lr_schedule: constant`` is :func:`transformers.get_constant_schedule_with_warmup`, ``lr_schedule: cosine`` is
:func:`transformers.get_cosine_with_min_lr_schedule_with_warmup` (half a cosine from ``lr`` down to ``min_lr``).
Both are ``LambdaLR`` schedulers stepped once per optimizer step, as the transformers Trainer does: optimizer
step ``s`` (0-based) runs at ``lr · λ(s)``, so warm-up runs ``0, lr/W, 2·lr/W, …`` and reaches ``lr`` at step ``W``.
That is also the per-iteration rule of the MAE/MAR ``util/lr_sched.adjust_learning_rate`` (``lr · epoch /
warmup_epochs`` with a fractional epoch, 0 at the first iteration), and the cosine phase
``min_lr + (lr − min_lr)·½(1 + cos(π·(s − W)/(T − W)))`` is the same formula mgen used before. The one change from
mgen's earlier hand-written schedule: its warm-up ran one step ahead (``lr·(s + 1)/W``, never 0);
``tests/train/test_library_parts.py`` pins both facts step by step.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers.optimization import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

SCHEDULES = ("constant", "cosine")


def build_lr_scheduler(optimizer: Optimizer, schedule: str, warmup_steps: int, total_steps: int, lr: float,
                       min_lr: float = 0.0) -> LambdaLR:
    """The ``LambdaLR`` for ``schedule`` (``constant`` or ``cosine``) on ``optimizer`` (whose groups start at ``lr``)."""
    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps)
    if schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps,
                                                           num_training_steps=total_steps, min_lr_rate=min_lr / lr)
    raise ValueError(f"unknown lr_schedule {schedule!r} ({' or '.join(SCHEDULES)})")


def lr_at(scheduler: LambdaLR, base_lr: float, step: int) -> float:
    """The learning rate ``scheduler`` gives optimizer step ``step`` (0-based), without stepping it."""
    return base_lr * scheduler.lr_lambdas[0](step)
