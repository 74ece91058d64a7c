"""Training data, in one place: the offline digits as images, VQ codes or scaled latents, cached latents files, and
the text windows of the offline corpus (docs/ARCHITECTURE.md, "Training").

A family's training function receives these through the :class:`~mgen.train.builder.TrainerFactory`
(``factory.data``), so the model modules below this layer never import it.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mgen.errors import UserError
from mgen.hub import load_checkpoint
from mgen.tokenizers import digits as digits_data  # the module, so that tests can shorten the data set

#: images per tokenizer call while encoding a data set
ENCODE_BATCH = 256


def _image_size(tokenizer: Any, default: int = 16) -> int:
    for attr in ("image_size", "img_size", "resolution"):
        v = getattr(tokenizer, attr, None) or getattr(getattr(tokenizer, "config", None), attr, None)
        if isinstance(v, int):
            return v
    return default


@torch.no_grad()
def _encode(tokenizer: Any, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([tokenizer.encode(images[i:i + ENCODE_BATCH]) for i in range(0, len(images), ENCODE_BATCH)])


def digits(split: str = "train", size: int = 16, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [-1, 1] (N, channels, size, size), labels) of the offline digits split (what the tokenizers train on)."""
    return digits_data.digits_images(split, size=size, channels=channels)


def digits_codes(tokenizer: Any, split: str = "train", size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(VQ codes (N, h, w), labels) of the offline digits (``size``×``size`` RGB, default the tokenizer's size)."""
    images, labels = digits_data.digits_images(split, size=size or _image_size(tokenizer))
    return _encode(tokenizer, images).long(), labels.long()


def digits_latents(tokenizer: Any, split: str = "train", size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latents, labels) of the offline digits: ``tokenizer.to_model(encode(x))`` for a tokenizer that defines
    its own scaling (the pixel patch tokenizer), else ``encode(x) · scaling_factor`` (KL-VAE, RAE)."""
    images, labels = digits_data.digits_images(split, size=size or _image_size(tokenizer), channels=3)
    z = _encode(tokenizer, images)
    z = tokenizer.to_model(z) if hasattr(tokenizer, "to_model") else z * float(tokenizer.scaling_factor)
    return z.float().contiguous(), labels.long()


def cached_latents(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, labels) from a ``.safetensors`` file with tensors ``latents`` (already scaled) and ``labels``."""
    d = load_checkpoint(path)
    if "latents" not in d or "labels" not in d:
        raise UserError(f"{path}: a cached-latents file needs tensors 'latents' and 'labels'")
    return d["latents"].float(), d["labels"].long()


def text_windows(entry: Any, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(train windows, held-out windows, tokenizer) of the offline corpus (CPython's documentation), tokenised with
    the entry's tokenizer file."""
    from mgen.models.dlm import DLMConfig, tokenizer_path
    from mgen.models.dlm_data import TextTokenizer, pack, split_documents, stdlib_documents

    tok = TextTokenizer.from_file(tokenizer_path(DLMConfig.from_mapping(entry.arch).tokenizer_file, entry.name))
    train_txt, held_txt = split_documents(stdlib_documents())
    return pack(train_txt, tok, seq_len), pack(held_txt, tok, seq_len), tok
