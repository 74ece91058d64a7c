"""Exponential moving average of a model's parameters (Polyak averaging, as in MAR / DiT training).

Built on torch's own :class:`torch.optim.swa_utils.AveragedModel` with
:func:`torch.optim.swa_utils.get_ema_multi_avg_fn` (``torch._foreach_lerp_(ema, param, 1 − decay)``), the same
update mgen's hand-written loop did (``ema.lerp_(param, 1 − decay)``); ``tests/train/test_library_parts.py``
proves the two bit-identical step by step. Buffers are copied, not averaged (``use_buffers=False``), as before.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA:
    """Keeps ``ema = decay·ema + (1 − decay)·param`` for every parameter; buffers are copied.

    ``EMA(model, decay).model`` starts as a copy of ``model`` (``AveragedModel`` would instead copy the first
    updated weights; the constructor's first ``update_parameters`` call makes the copy, so every later
    ``update`` averages, exactly like the hand-written version this class replaced).
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self.averaged.requires_grad_(False).eval()
        self.averaged.update_parameters(model)  # n_averaged 0 -> 1: a plain copy of the starting weights

    @property
    def model(self) -> nn.Module:
        """The averaged network (same class and state-dict keys as the trained one)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current parameters."""
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged network's state dict (the keys of the trained model, no ``module.`` prefix)."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
        if int(self.averaged.n_averaged) == 0:  # loaded weights are averages: never overwrite them by a copy
            self.averaged.n_averaged.fill_(1)
