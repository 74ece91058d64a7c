"""The offline image data of mgen's shipped tokenizers: ``sklearn.datasets.load_digits`` at 16×16 RGB.

The 8×8 grey digits (pixel values 0…16 → [-1, 1]) use the fixed train / held-out split of
:func:`mgen.eval.digits.digits_split` (every fifth image of each class held out: 1,438 / 359 images),
are upsampled bilinearly to ``size``×``size`` and repeated over three channels, so that every tokenizer
sees the ``B×3×H×W`` images in [-1, 1] of the Tokenizer protocol.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def digits_images(split: str = "train", size: int = 16, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of one split ("train" or "test"): float32 ``N×channels×size×size`` in [-1, 1]."""
    from mgen.eval.digits import digits_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x_tr, y_tr, x_te, y_te = digits_split()
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.repeat(1, channels, 1, 1).contiguous(), y
