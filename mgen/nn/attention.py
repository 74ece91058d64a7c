"""One attention function for every model in mgen, with selectable backends.

Backends
--------
``sdpa``      PyTorch ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
``xformers``  ``xformers.ops.memory_efficient_attention`` when the optional extra is installed.
``math``      The textbook softmax(QKᵀ/√d + bias)·V in the input dtype's accumulation; the reference the
              others are tested against.
``auto``      ``sdpa`` (it dispatches to flash attention itself where it can); ``xformers`` is used only
              when asked for.

The backend is chosen per call (``backend=``), else by the ``MGEN_ATTN`` environment variable, else
``auto``. Tensors are laid out (B, H, N, D). ``mask`` is either boolean (True = may attend) or an
additive float bias, broadcastable to (B, H, N_q, N_k).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch
import torch.nn.functional as F

from mgen.errors import UserError

BACKENDS = ("auto", "sdpa", "xformers", "math")


@lru_cache(maxsize=1)
def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # ImportError, or a broken build that fails on import
        return False
    return True


def available_backends() -> list[str]:
    """Concrete backends usable in this environment (``auto`` excluded)."""
    out = ["sdpa", "math"]
    if xformers_available():
        out.insert(1, "xformers")
    return out


def resolve_backend(backend: str | None = None) -> str:
    """Turn ``backend`` / ``$MGEN_ATTN`` / ``auto`` into a concrete backend name."""
    name = (backend or os.environ.get("MGEN_ATTN") or "auto").lower()
    if name not in BACKENDS:
        raise UserError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "sdpa"
    if name == "xformers" and not xformers_available():
        raise UserError("attention backend 'xformers' requested but xformers is not installed (pip install 'mgen[xformers]')")
    return name


def _as_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return bias.masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def _math(q, k, v, mask, dropout_p, scale, is_causal):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if is_causal:
        nq, nk = q.shape[-2], k.shape[-2]
        causal = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril()  # top-left aligned, as SDPA
        scores = scores.masked_fill(~causal, float("-inf"))
    bias = _as_bias(mask, scores.dtype)
    if bias is not None:
        scores = scores + bias
    attn = scores.softmax(dim=-1)
    if dropout_p > 0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


def _xformers(q, k, v, mask, dropout_p, scale, is_causal):
    import xformers.ops as xops

    if is_causal and mask is not None:
        raise ValueError("xformers backend: pass either is_causal or mask, not both")
    bias = None
    if is_causal:
        bias = xops.LowerTriangularMask()
    elif mask is not None:
        b, h, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        full = _as_bias(mask, q.dtype).expand(b, h, nq, nk)
        # xformers wants the bias' last dimension padded to a multiple of 8 in memory.
        pad = (-nk) % 8
        storage = torch.zeros(b, h, nq, nk + pad, dtype=q.dtype, device=q.device)
        storage[..., :nk] = full
        bias = storage[..., :nk]
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout_p, scale=scale
    )
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask)·v for (B, H, N, D) tensors through the chosen backend.

    ``k``/``v`` may hold more positions than ``q`` (cross attention, or cached keys/values from an
    earlier step as ReCAP and ENAT use). ``is_causal`` hides key j > query i (top-left aligned, as
    SDPA and xformers' LowerTriangularMask). ``dropout_p`` is applied as given: pass 0 at inference.
    """
    name = resolve_backend(backend)
    if name == "sdpa":
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    if name == "xformers":
        return _xformers(q, k, v, mask, dropout_p, scale, is_causal)
    return _math(q, k, v, mask, dropout_p, scale, is_causal)
