"""Scaled latents ↔ a tokenizer: the one place that divides by the scaling factor before decoding.

Generators see ``latent * scaling_factor`` (MAR: ``0.2325`` for KL-16, DiT: ``0.18215`` for the SD-VAE); a tokenizer's
``decode`` takes unscaled latents. A tokenizer with its own ``from_model`` (the pixel patch tokenizer's shift and
scale) says how to undo its scaling itself.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch


def scaling_factor(tokenizer: Any) -> float:
    """The factor a generator's latents carry: the tokenizer's attribute or its (diffusers) config entry."""
    if hasattr(type(tokenizer), "scaling_factor") or "scaling_factor" in getattr(tokenizer, "__dict__", {}):
        return float(tokenizer.scaling_factor)
    config = getattr(tokenizer, "config", None)
    sf = config.get("scaling_factor") if isinstance(config, Mapping) else None
    return float(sf) if sf is not None else 1.0


def unscale(tokenizer: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled generator latents → the tokenizer's own latents."""
    if hasattr(tokenizer, "from_model"):
        return tokenizer.from_model(latents)
    return latents / scaling_factor(tokenizer)


def decode_latents(tokenizer: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → images in [-1, 1] (float32, clamped) through an mgen tokenizer or a diffusers AutoencoderKL."""
    z = unscale(tokenizer, latents.float())
    param = next(tokenizer.parameters(), None) if isinstance(tokenizer, torch.nn.Module) else None
    if param is not None:
        z = z.to(device=param.device, dtype=param.dtype)
    out = tokenizer.decode(z)
    if hasattr(out, "sample"):  # diffusers AutoencoderKL returns a DecoderOutput
        out = out.sample
    return out.float().clamp(-1, 1)


def decode_codes(tokenizer: Any, codes: torch.Tensor) -> torch.Tensor:
    """Code indices → images in [-1, 1] (float32, clamped) through a VQ tokenizer."""
    param = next(tokenizer.parameters(), None) if isinstance(tokenizer, torch.nn.Module) else None
    if param is not None:
        codes = codes.to(param.device)
    return tokenizer.decode(codes).float().clamp(-1, 1)
