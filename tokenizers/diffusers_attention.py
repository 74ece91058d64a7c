"""A diffusers attention processor that routes the spatial self-attention of VAE blocks through
:func:`mgen.nn.attention` (docs/ARCHITECTURE.md, "Layers": one attention function serves every model).

The LDM autoencoder's attention block (Rombach et al. 2022, ``AttnBlock``) is single-head self-attention
over the h·w positions of a feature map, after a GroupNorm, with a residual connection:
``x + proj_out(softmax(q kᵀ / √C) v)``. diffusers hosts it as ``Attention(..., residual_connection=True,
_from_deprecated_attn_block=True)``; this processor computes the same thing with mgen's backends.
"""

from __future__ import annotations

import torch
from torch import nn

from mgen.nn import attention


class MgenVAEAttnProcessor:
    """Processor for diffusers ``Attention`` modules used as spatial self-attention in VAE blocks."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or getattr(attn, "spatial_norm", None) is not None:
            raise NotImplementedError("MgenVAEAttnProcessor handles plain spatial self-attention only")
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.reshape(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        bsz, n, inner = q.shape
        heads = attn.heads
        q, k, v = (t.reshape(bsz, n, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
        out = attention(q, k, v, scale=attn.scale)
        out = out.transpose(1, 2).reshape(bsz, n, inner).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def use_mgen_attention(model: nn.Module) -> nn.Module:
    """Set :class:`MgenVAEAttnProcessor` on every diffusers ``Attention`` inside ``model``."""
    from diffusers.models.attention_processor import Attention

    proc = MgenVAEAttnProcessor()
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(proc)
    return model
