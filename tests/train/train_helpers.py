"""Tiny tasks and data for the trainer tests (imported by the tests here and by their subprocess scripts)."""

from __future__ import annotations

import torch
from torch import nn

from mgen.train import TrainConfig, Trainer


class TinyTask:
    """Noisy regression through an MLP with dropout: exercises the loss generator and the global RNG."""

    def __init__(self, seed: int = 0, dropout: float = 0.1) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 1))

    def loss(self, model, batch, generator):
        x, y = batch
        noise = 0.01 * torch.randn(y.shape, generator=generator, device=y.device)
        return ((model(x) - (y + noise)) ** 2).mean()


class LinearTask:
    """Deterministic least squares (no dropout, no noise): its gradient is a plain mean over the batch items."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def loss(self, model, batch, generator):
        x, y = batch
        return ((model(x) - y) ** 2).mean()


def data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def trainer(out, task=None, n: int = 64, **kw) -> Trainer:
    settings = dict(out_dir=str(out), max_steps=12, batch_size=8, lr=1e-2, warmup_steps=3, ema_decay=0.9,
                    grad_clip=1.0, checkpoint_every=4, log_every=1, progress=False, plot=False)
    settings.update(kw)
    return Trainer(task or TinyTask(), data(n), TrainConfig(**settings))


def same_weights(a: Trainer, b: Trainer) -> None:
    """Assert bit-identical model and EMA weights."""
    for (k, v), w in zip(a.unwrapped.state_dict().items(), b.unwrapped.state_dict().values()):
        assert torch.equal(v, w), k
    if a.ema is not None:
        for (k, v), w in zip(a.ema.state_dict().items(), b.ema.state_dict().values()):
            assert torch.equal(v, w), f"ema {k}"
