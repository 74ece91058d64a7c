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
    """Per-layer keys/values (B, H, N, D) recorded at a full step and reused at cheap steps.

    Context-feature reuse (ReCAP, Liu et al. 2025, arXiv 2505.19089, §3): a *full* evaluation records
    every attention layer's K/V; a *cheap* evaluation recomputes only some rows and lets them attend
    through the recorded K/V of all other rows.

    ``mode``:
      * ``"record"``: each :class:`Attention` stores its (k, v) under its ``layer_id``;
      * ``"reuse"``: the layer's input holds only the recomputed rows. Without ``append`` their K/V
        overwrite rows ``positions`` (B, n) of a copy of the stored K/V (positions that existed at the
        full step, e.g. every token of MaskGIT or of MAR's decoder); with ``append=True`` the first
        ``positions.shape[1]`` computed rows (none if ``positions`` is None) overwrite and the others are
        concatenated after the stored rows (rows that did not exist at the full step, e.g. tokens that
        joined MAR's encoder after being decoded). The queries then attend to all rows.
      * ``"off"``: the cache is ignored (a plain evaluation).

    Attention is permutation invariant over keys (positions enter through the embeddings), so the
    row order inside the stored K/V does not matter. Backends see ordinary (B, H, N_q, D) queries and
    (B, H, N_k, D) keys/values, so sdpa, xformers and math all serve the cached path unchanged.

    ``group`` is the sampler's request to a generator: (B, n) token indices (in the image-token
    sequence, without class/buffer rows) to recompute; the generator turns it into ``positions`` of
    its own layers. ``children`` holds separate caches of sub-networks whose rows differ (MAR's
    encoder and decoder): :meth:`child` creates them with the parent's mode.
    """

    mode: str = "record"
    positions: torch.Tensor | None = None  # (B, n) indices of the computed rows within the full sequence
    keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    append: bool = False
    group: torch.Tensor | None = None
    children: dict[str, "KVCache"] = field(default_factory=dict)
    rows: torch.Tensor | None = None  # (B, N) sequence index of each recorded row, where a layer sees a subset
    recompute_extra: bool = False  # generator option: also recompute class/buffer rows at cheap steps

    def clear(self) -> None:
        self.keys.clear()
        for c in self.children.values():
            c.clear()

    def child(self, name: str) -> "KVCache":
        """The sub-cache ``name`` (created on first use), with this cache's current mode."""
        c = self.children.get(name)
        if c is None:
            c = self.children[name] = KVCache(mode=self.mode)
        c.mode, c.recompute_extra = self.mode, self.recompute_extra
        return c

    def combine(self, layer_id: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record (k, v), or merge the recomputed rows' (k, v) with the stored ones (see the class doc)."""
        if self.mode == "off":
            return k, v
        if self.mode == "record":
            self.keys[layer_id] = (k, v)
            return k, v
        if self.mode != "reuse":
            raise ValueError(f"unknown KVCache mode {self.mode!r}")
        if layer_id not in self.keys:
            raise RuntimeError("KVCache in reuse mode has no keys recorded for this layer: run a full step first")
        k_all, v_all = self.keys[layer_id]
        if k_all.shape[0] != k.shape[0]:
            raise RuntimeError(f"KVCache: recorded batch {k_all.shape[0]} != current batch {k.shape[0]}")
        if self.append:
            n_over = 0 if self.positions is None else self.positions.shape[1]
            if n_over:
                idx = self.positions.to(k.device)[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
                k_all = k_all.scatter(2, idx, k[:, :, :n_over])
                v_all = v_all.scatter(2, idx, v[:, :, :n_over])
            return torch.cat([k_all, k[:, :, n_over:]], dim=2), torch.cat([v_all, v[:, :, n_over:]], dim=2)
        if self.positions is None:
            raise RuntimeError("KVCache in reuse mode needs positions (or append=True)")
        pos = self.positions.to(k.device)
        if pos.shape != (k.shape[0], k.shape[2]):
            raise RuntimeError(f"KVCache positions {tuple(pos.shape)} do not match the computed rows {(k.shape[0], k.shape[2])}")
        idx = pos[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        return k_all.scatter(2, idx, k), v_all.scatter(2, idx, v)


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
            k, v = cache.combine(self.layer_id, k, v)
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
