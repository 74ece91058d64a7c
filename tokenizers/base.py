"""The Tokenizer protocol (DESIGN.md, "The three protocols").

A tokenizer turns images in [-1, 1] of shape (B, 3, H, W) into either discrete code indices (B, h, w)
or the *unscaled* continuous latent mean (B, C, h, w), and back. Generators see
``latent * scaling_factor``; ``decode`` takes unscaled latents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Tokenizer(Protocol):
    """What every mgen tokenizer provides."""

    scaling_factor: float

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) → indices (B, h, w) or unscaled latent mean (B, C, h, w)."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Indices or unscaled latents → images in [-1, 1], (B, 3, H, W)."""
        ...

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path) -> "Tokenizer":
        ...

    def save_pretrained(self, directory: str | Path) -> None:
        ...
