"""A pixel-space patch tokenizer: continuous tokens are flattened pixel patches (no learned weights).

For the offline digits demo of MAR (Li et al. 2024 model continuous tokens; any continuous tokenizer
works, the paper's §5 notes MAR also runs on raw pixels). An image (B, 3, H, W) in [-1, 1] is turned
grey (channel mean) when ``channels`` is 1, then cut into p×p patches: the latent is (B, channels·p², H/p,
W/p), channel-major within a patch. ``decode`` is the exact inverse (grey repeated to RGB), clamped to
[-1, 1]. Generators see ``(latent − shift)·scaling_factor``: set from the data so tokens have unit
variance, as MAR does with KL-16 (0.2325). The Tokenizer protocol of :mod:`mgen.tokenizers.base`;
``shift`` is an extra affine offset applied by :meth:`to_model` / :meth:`from_model`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from mgen import hub
from mgen.errors import UserError, WeightsError
from mgen.tokenizers.base import (CONFIG_NAME, WEIGHTS_NAME, build_from_arch, config_arch, config_kwargs, finish,
                                  folder_of, is_own_folder, load_saved_folder, read_json, registry_entry,
                                  split_loading_kwargs)


class PatchTokenizer(ModelMixin, ConfigMixin):
    """Images ↔ flattened pixel patches (a parameter-free continuous tokenizer)."""

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(self, patch_size: int = 2, channels: int = 1, image_size: int = 16, scaling_factor: float = 1.0,
                 shift: float = 0.0) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise UserError(f"patch tokenizer: channels must be 1 or 3, got {channels}")
        if patch_size < 1 or image_size % patch_size:
            raise UserError(f"patch tokenizer: image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = int(patch_size)
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.scaling_factor = float(scaling_factor)
        self.shift = float(shift)
        # A parameter-free module has no device or dtype for diffusers (``pipe.device``, ``pipe.dtype``, ``.to()``)
        # to read; this empty, unsaved buffer gives it one.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def latent_channels(self) -> int:
        return self.channels * self.patch_size ** 2

    @property
    def stride(self) -> int:
        return self.patch_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) (or (B, 1, H, W)) in [-1, 1] → (B, channels·p², H/p, W/p) unscaled latents."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise UserError(f"patch tokenizer: expected B×3×H×W images, got {tuple(images.shape)}")
        b, c, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise UserError(f"patch tokenizer: image size {h}×{w} is not a multiple of the patch size {p}")
        x = images.float()
        if self.channels == 1 and c == 3:
            x = x.mean(dim=1, keepdim=True)
        elif self.channels == 3 and c == 1:
            x = x.expand(b, 3, h, w)
        ch = x.shape[1]
        x = x.reshape(b, ch, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, ch * p * p, h // p, w // p)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, channels·p², h, w) unscaled latents → (B, 3, h·p, w·p) images in [-1, 1]."""
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise UserError(f"patch tokenizer: expected B×{self.latent_channels}×h×w latents, got {tuple(z.shape)}")
        b, _, h, w = z.shape
        p, ch = self.patch_size, self.channels
        x = z.float().reshape(b, ch, p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, ch, h * p, w * p)
        if ch == 1:
            x = x.expand(b, 3, h * p, w * p)
        return x.clamp(-1, 1).contiguous()

    def to_model(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents → what the generator models: (latents − shift)·scaling_factor."""
        return (latents - self.shift) * self.scaling_factor

    def from_model(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scaling_factor + self.shift

    # -- files -----------------------------------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> "PatchTokenizer":
        """From a registry ``arch`` mapping; unknown keys: ``UserError``."""
        return build_from_arch(cls, arch, "patch tokenizer")

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, config: Any = None, **kwargs: Any) -> "PatchTokenizer":
        """A registry name (``patch-digits``), a folder written by :meth:`save_pretrained` (diffusers' loader), an
        older mgen folder / ``.json`` file holding only the config, or ``config`` (a registry name, YAML or arch
        mapping) when ``path_or_name`` names no weights. ``torch_dtype`` is accepted (there are no weights)."""
        dtype, rest = split_loading_kwargs(kwargs, cls.__name__)
        arch = config_arch(config, cls, "a patch tokenizer")
        p = Path(os.fspath(path_or_name)).expanduser()
        if not p.exists():
            entry = registry_entry(str(path_or_name), cls, "a patch tokenizer")
            found = hub.find_weights(entry)
            if found is None:
                return finish(cls.from_arch(arch if arch is not None else entry.arch), dtype)
            p = found
        folder = folder_of(p)
        if folder is not None and is_own_folder(folder, cls) and (folder / WEIGHTS_NAME).is_file():
            return finish(load_saved_folder(cls, folder, rest), dtype)
        f = p / CONFIG_NAME if p.is_dir() else p
        if not f.is_file():
            raise WeightsError(f"{p}: no patch tokenizer config ({CONFIG_NAME})")
        data = read_json(f)
        if data.get("_class_name", cls.__name__) != cls.__name__:
            raise WeightsError(f"{f}: holds a {data.get('_class_name')}, not a {cls.__name__}")
        return finish(cls(**config_kwargs(cls, data)), dtype)
