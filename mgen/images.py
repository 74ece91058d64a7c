"""Image helpers: tensors in [-1, 1] ↔ PIL / uint8, grids, and atomic PNG writing."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid as torchvision_make_grid


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] → (B, H, W, C) uint8, rounding like torchvision's ``save_image``."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile (B, C, H, W) images into one (C', H', W') image, ``nrow`` per row (default ≈ √B): torchvision's
    ``make_grid`` (grey images come back as 3 channels, as there)."""
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    return torchvision_make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG atomically (temp file + rename): no half-written file is ever left behind."""
    from mgen.fileio import atomic_write

    path = Path(path)
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG")
    return path


#: the long side a grid reaches by default (small images are upscaled by an integer nearest-neighbour factor)
GRID_MIN_SIDE = 256


def grid_upscale(height: int, width: int, min_side: int = GRID_MIN_SIDE) -> int:
    """The smallest integer factor that brings the long side of a ``height`` × ``width`` grid to ``min_side``."""
    return max(1, math.ceil(min_side / max(1, height, width)))


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
              upscale: int | None = None) -> Path:
    """Tile ``images`` (in [-1, 1]) into one PNG, upscaled by ``upscale`` (default: :func:`grid_upscale`, so a grid
    of 16×16 digits is one a person can see) with nearest-neighbour pixels (every sample pixel stays a square)."""
    grid = make_grid(images, nrow=nrow)
    factor = upscale if upscale is not None else grid_upscale(grid.shape[-2], grid.shape[-1])
    if factor > 1:
        grid = grid.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return save_png(to_pil(grid[None])[0], path)
