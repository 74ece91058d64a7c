"""Input checks shared by the tokenizers: image batches and latents (one-line ``UserError`` messages)."""

from __future__ import annotations

from typing import Any

import torch

from mgen.errors import UserError


def check_images(x: Any, channels: int, stride: int, what: str = "images") -> torch.Tensor:
    """Validate a ``B×C×H×W`` float batch in [-1, 1]: channel count, sizes divisible by ``stride``, finite."""
    if not torch.is_tensor(x):
        raise UserError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise UserError(f"{what}: expected a B×{channels}×H×W tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise UserError(f"{what}: expected {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[2] % stride or x.shape[3] % stride or x.shape[2] == 0 or x.shape[3] == 0:
        raise UserError(f"{what}: height and width must be positive multiples of the stride {stride}, got {tuple(x.shape[2:])}")
    if not x.is_floating_point():
        raise UserError(f"{what}: expected a floating-point tensor in [-1, 1], got {x.dtype}")
    if not torch.isfinite(x).all():
        raise UserError(f"{what}: contains NaN or infinite values")
    return x


def check_latents(z: Any, channels: int, what: str = "latents") -> torch.Tensor:
    if not torch.is_tensor(z) or z.dim() != 4:
        raise UserError(f"{what}: expected a B×{channels}×h×w tensor, got {getattr(z, 'shape', type(z).__name__)}")
    if z.shape[1] != channels:
        raise UserError(f"{what}: expected {channels} latent channels, got {z.shape[1]}")
    if not z.is_floating_point() or not torch.isfinite(z).all():
        raise UserError(f"{what}: must be a finite floating-point tensor")
    return z
