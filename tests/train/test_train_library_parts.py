"""Library parts instead of hand-written ones (issue 16.3), each pinned against the code it replaced:
EMA = torch's AveragedModel + get_ema_multi_avg_fn; warm-up + cosine / constant LR = transformers' schedulers."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from mgen.train import EMA
from mgen.train.schedule import build_lr_scheduler, lr_at
from train_helpers import trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class HandWrittenEMA:
    """mgen's EMA before it used AveragedModel (verbatim logic), kept here as the reference."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = dict(model.named_parameters())
        for name, p in self.model.named_parameters():
            p.lerp_(src[name].detach().to(p.dtype), 1.0 - self.decay)
        src_b = dict(model.named_buffers())
        for name, b in self.model.named_buffers():
            b.copy_(src_b[name])


def old_lr(step: int, lr: float, min_lr: float, warmup: int, total: int, schedule: str) -> float:
    """mgen's hand-written schedule before transformers' (verbatim logic)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def mae_lr(step: int, steps_per_epoch: int, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """MAE / MAR ``util/lr_sched.adjust_learning_rate`` at the fractional epoch of iteration ``step``."""
    epoch = step / steps_per_epoch
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def test_ema_is_bit_identical_to_hand_written():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.GELU(), nn.Linear(16, 3))
    new, old = EMA(model, 0.9), HandWrittenEMA(model, 0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(25):
        loss = model(torch.randn(8, 6)).pow(2).mean()  # train mode: BatchNorm's running stats (buffers) move too
        opt.zero_grad()
        loss.backward()
        opt.step()
        new.update(model)
        old.update(model)
    assert list(new.state_dict()) == list(model.state_dict())  # no "module." prefix, no n_averaged
    for (k, a), b in zip(new.state_dict().items(), old.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in new.model.parameters()) and not new.model.training


def test_ema_starts_as_a_copy_and_rejects_bad_decay():
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    ema = EMA(model, 0.5)
    for a, b in zip(ema.model.parameters(), model.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with pytest.raises(ValueError):
        EMA(model, 1.0)


@pytest.mark.parametrize("schedule,warmup,min_lr", [("cosine", 5, 1e-4), ("cosine", 0, 0.0), ("constant", 5, 0.0),
                                                    ("constant", 0, 0.0)])
def test_schedules_against_hand_written(schedule, warmup, min_lr):
    """Cosine phase (and constant) identical step by step to mgen's earlier formula (to 1e-15 relative: the
    library evaluates ``lr·(f·(1 − r) + r)`` where the old code had ``min + (lr − min)·f``); the warm-up is the
    transformers / MAE convention ``lr·s/W``, i.e. the old warm-up one step later (the old code never ran at 0)."""
    lr, total = 1e-2, 40
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_lr_scheduler(opt, schedule, warmup, total, lr, min_lr)
    for s in range(total):
        new = lr_at(sched, lr, s)
        assert opt.param_groups[0]["lr"] == pytest.approx(new, rel=1e-15, abs=0)  # what the optimizer really uses
        if s < warmup:
            assert new == pytest.approx(lr * s / warmup, rel=1e-15, abs=0)
            if s >= 1:
                assert new == pytest.approx(old_lr(s - 1, lr, min_lr, warmup, total, schedule), rel=1e-15, abs=0)
        else:
            assert new == pytest.approx(old_lr(s, lr, min_lr, warmup, total, schedule), rel=1e-15, abs=0)
        opt.step()
        sched.step()
    if schedule == "cosine":
        assert lr_at(sched, lr, total) == pytest.approx(min_lr, rel=1e-12, abs=1e-18)


def test_cosine_matches_the_mae_mar_per_iteration_rule():
    """The official MAR recipe (MAE's lr_sched, adjusted every iteration): the same numbers as transformers'."""
    spe, lr, min_lr, warmup_epochs, epochs = 10, 8e-4, 1e-5, 2, 7
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_lr_scheduler(opt, "cosine", warmup_epochs * spe, epochs * spe, lr, min_lr)
    for s in range(epochs * spe):
        assert lr_at(sched, lr, s) == pytest.approx(mae_lr(s, spe, lr, min_lr, warmup_epochs, epochs), rel=1e-12)


def test_trainer_runs_each_step_at_the_scheduled_lr(tmp_path):
    """The learning rate in log.jsonl (what the optimizer used) is the schedule's, step by step; resume keeps it."""
    t = trainer(tmp_path, lr_schedule="cosine", min_lr=1e-4, warmup_steps=3)
    t.train(stop_after=5)
    trainer(tmp_path, lr_schedule="cosine", min_lr=1e-4, warmup_steps=3).train()
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 13))
    for r in logged:
        assert r["lr"] == t.lr_at(r["step"] - 1)
