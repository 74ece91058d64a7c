"""SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer", FFN_SwiGLU), with the fused
``w12`` / ``w3`` parameter names of DINOv2 / LightningDiT / RAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """w3(silu(a) · b) with [a, b] = w12(x)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)
