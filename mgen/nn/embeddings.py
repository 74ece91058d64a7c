"""Position, timestep and label embeddings shared by the transformers in mgen."""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding
from torch import nn


def sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin(pos·ω), cos(pos·ω)] with ω_i = 10000^(-i/(D/2)) (MAE / DiT ``get_1d_sincos_pos_embed``)."""
    if embed_dim % 2:
        raise ValueError("embed_dim must be even")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_size: int | tuple[int, int], extra_tokens: int = 0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (extra_tokens + H·W, D), float32.

    Same layout as MAE/DiT's ``get_2d_sincos_pos_embed``: the first half of the channels encodes the
    column (w) coordinate, the second half the row (h) coordinate; extra tokens get zeros.
    """
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if gh == gw:  # diffusers' table is the same to the bit for a square grid at base_size = the grid (tested)
        return get_2d_sincos_pos_embed(embed_dim, (gh, gw), cls_token=extra_tokens > 0, extra_tokens=extra_tokens,
                                       base_size=gh, output_type="pt").float()
    # a non-square grid: diffusers rescales the column positions by gw/gh (its base_size is one number), MAE does not
    rows = torch.arange(gh, dtype=torch.float64)[:, None].expand(gh, gw)
    cols = torch.arange(gw, dtype=torch.float64)[None, :].expand(gh, gw)
    emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    if extra_tokens:
        emb = torch.cat([torch.zeros(extra_tokens, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0) -> torch.Tensor:
    """[cos(t·f), sin(t·f)] with f_i = max_period^(-i/(half - freq_shift)) (DiT / ADM ``timestep_embedding``).

    ``freq_shift`` = 0 is the official DiT/ADM embedding; diffusers' ``DiTTransformer2DModel`` uses
    ``Timesteps(downscale_freq_shift=1)``, i.e. ``freq_shift=1``.
    """
    # diffusers' get_timestep_embedding with cos first is the same embedding, to the bit (tested)
    return get_timestep_embedding(t.float(), dim, flip_sin_to_cos=True, downscale_freq_shift=freq_shift,
                                  max_period=int(max_period) if float(max_period).is_integer() else max_period)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps → vectors: sinusoidal features (256) → Linear → SiLU → Linear (DiT)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, freq_shift: float = 0.0) -> None:
        super().__init__()
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_embedding_size, freq_shift=self.freq_shift)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels → vectors, with label dropout to the extra "null" class for classifier-free guidance.

    The table has ``num_classes + 1`` rows when ``dropout_prob > 0`` (DiT: the null class is 1000).
    Dropout draws from the ``generator`` passed to ``forward``; ``force_drop_ids`` (1 = drop) overrides it.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool = False, force_drop_ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids, generator)
        return self.embedding_table(labels)


class FourierTimestepEmbedder(nn.Module):
    """Continuous t ∈ [0, 1] → vectors via random Fourier features [sin(2πWt), cos(2πWt)] → MLP
    (Tancik et al. 2020; the ``GaussianFourierEmbedding`` of RAE's DiT^DH). W ~ N(0, scale²) is fixed
    at construction (drawn from ``generator``) and stored with the weights (key ``W``)."""

    def __init__(self, hidden_size: int, embedding_size: int = 256, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size, generator=generator) * scale, requires_grad=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t[:, None].float() * self.W[None].float() * (2 * math.pi)
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
