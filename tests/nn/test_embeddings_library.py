"""The shared embeddings are diffusers' own functions where the numbers are the same (issue: library parts instead of
hand-written ones): checked to the bit against the MAE / DiT formulas they replace."""

from __future__ import annotations

import math

import pytest
import torch

from mgen.nn.embeddings import sincos_1d, sincos_2d, timestep_embedding


def _mae_2d(d: int, gh: int, gw: int, extra: int = 0) -> torch.Tensor:
    rows = torch.arange(gh, dtype=torch.float64)[:, None].expand(gh, gw)
    cols = torch.arange(gw, dtype=torch.float64)[None, :].expand(gh, gw)
    emb = torch.cat([sincos_1d(d // 2, cols), sincos_1d(d // 2, rows)], dim=1)
    return torch.cat([torch.zeros(extra, d, dtype=emb.dtype), emb]).float()


def _adm_timestep(t: torch.Tensor, dim: int, freq_shift: float = 0.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - freq_shift))
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


@pytest.mark.parametrize("d, g, extra", [(64, 4, 0), (768, 16, 0), (96, 8, 1), (1024, 32, 0), (128, 7, 4), (32, (2, 6), 0)])
def test_sincos_2d_is_the_mae_table(d, g, extra):
    gh, gw = (g, g) if isinstance(g, int) else g
    assert torch.equal(sincos_2d(d, g, extra), _mae_2d(d, gh, gw, extra))


@pytest.mark.parametrize("dim", [256, 32, 33])
@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_timestep_embedding_is_the_adm_one(dim, shift):
    t = torch.tensor([0.0, 1.0, 17.0, 999.0, 0.5])
    assert torch.equal(timestep_embedding(t, dim, freq_shift=shift), _adm_timestep(t, dim, shift))
