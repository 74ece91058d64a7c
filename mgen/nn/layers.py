"""Attention module, MLP, ViT block and adaLN-Zero block shared by every transformer in mgen.

Parameter names follow timm's ``Block`` / ``Attention`` / ``Mlp`` (``norm1``, ``attn.qkv``,
``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) and DiT's ``adaLN_modulation``, so that the official
MAR, MAE and DiT checkpoints load without renaming the block internals.

Every attention call goes through :func:`mgen.nn.attention.attention`; a layer can record its keys and
values (:class:`KVCache`) and later attend through them while recomputing only some rows, which is
what ReCAP's cheap steps and ENAT's visible-token reuse need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from mgen.nn.attention import attention


@dataclass
class KVCache:
    """Per-layer keys/values (B, H, N, D) for every position of a sequence, recorded at a full step.

    ``mode`` is ``"record"`` (a full evaluation stores its K/V) or ``"reuse"`` (the rows being computed
    are written into a copy of the stored K/V at ``positions``, and the queries attend to all N).
    """

    mode: str = "record"
    positions: torch.Tensor | None = None  # (B, n) indices of the computed rows within the full sequence
    keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def clear(self) -> None:
        self.keys.clear()


class Attention(nn.Module):
    """Multi-head self-attention with optional qk-norm, rotary embedding and K/V cache."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.layer_id = id(self)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rope: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: KVCache | None = None,
        backend: str | None = None,
    ) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        if cache is not None:
            if cache.mode == "record":
                cache.keys[self.layer_id] = (k, v)
            elif cache.mode == "reuse":
                k_all, v_all = cache.keys[self.layer_id]
                idx = cache.positions[:, None, :, None].expand(-1, self.num_heads, -1, self.head_dim)
                k = k_all.scatter(2, idx, k)
                v = v_all.scatter(2, idx, v)
            else:
                raise ValueError(f"unknown KVCache mode {cache.mode!r}")
        out = attention(q, k, v, mask, backend=backend, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """fc1 → activation → dropout → fc2 → dropout (timm's Mlp)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)) (ViT / MAE / timm Block)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop,
                              proj_drop=proj_drop, norm_layer=norm_layer)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rope=None, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask, rope=rope, cache=cache)
        return x + self.mlp(self.norm2(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x·(1 + scale) + shift, with (B, C) shift/scale broadcast over tokens (DiT)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class AdaLNBlock(nn.Module):
    """DiT block with adaptive layer norm zero (Peebles & Xie 2023, Fig. 3 and §3.2).

    ``c`` (B, dim) produces shift/scale/gate for the attention and MLP branches through
    ``adaLN_modulation`` = SiLU → Linear(dim, 6·dim), zero-initialised so every block starts as identity.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 norm_layer: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        norm_layer = norm_layer or (lambda d: nn.LayerNorm(d, elementwise_affine=False, eps=1e-6))
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None, rope=None,
                cache: KVCache | None = None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), mask=mask, rope=rope, cache=cache)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
