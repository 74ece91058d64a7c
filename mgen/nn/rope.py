"""2-D rotary position embedding for image tokens (Su et al. 2021, RoFormer Eq. 34, extended to 2-D as
in EVA-02 / LightningDiT / RAE): half of each head's channels rotate with the token's row, the other
half with its column; channel pairs are interleaved (x_{2i}, x_{2i+1})."""

from __future__ import annotations

import torch
from torch import nn


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x_0, x_1, x_2, x_3, …) → (−x_1, x_0, −x_3, x_2, …)."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


class Rope2D(nn.Module):
    """Rotary embedding for a ``grid``×``grid`` token grid (row-major) and heads of ``head_dim`` channels.

    Frequencies θ^(−2i/(head_dim/2)), i < head_dim/4, per axis; ``forward(q)`` on (B, H, N, head_dim)
    rotates q by the angles of its token's (row, column). When N is a multiple of grid² (tokens repeated
    in place, as DDT's head does for finer patches), each angle row is repeated accordingly.
    """

    def __init__(self, head_dim: int, grid: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4; got {head_dim}")
        axis_dim = head_dim // 2
        freqs = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
        pos = torch.arange(grid, dtype=torch.float64)
        ang = (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (grid, axis_dim), pairs share an angle
        rows = ang[:, None, :].expand(grid, grid, axis_dim)
        cols = ang[None, :, :].expand(grid, grid, axis_dim)
        full = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
        self.register_buffer("cos", full.cos().float(), persistent=False)
        self.register_buffer("sin", full.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2]
        cos, sin = self.cos, self.sin
        if n != cos.shape[0]:
            if n % cos.shape[0]:
                raise ValueError(f"RoPE built for {cos.shape[0]} tokens; got {n}")
            rep = n // cos.shape[0]
            cos, sin = cos.repeat_interleave(rep, dim=0), sin.repeat_interleave(rep, dim=0)
        return x * cos.to(x.dtype) + _rotate_pairs(x) * sin.to(x.dtype)
