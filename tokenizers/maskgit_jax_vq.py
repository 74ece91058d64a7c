"""The MaskGIT VQGAN (Chang et al., "MaskGIT: Masked Generative Image Transformer", CVPR 2022) as an mgen tokenizer.

This is the tokenizer of the JAX MaskGIT release, converted to PyTorch and retrained with strong
augmentation for MAGE (Li et al., "MAGE: MAsked Generative Encoder", CVPR 2023), distributed as
``vqgan_jax_strongaug.ckpt`` and used by ENAT (LeapLabTHU/ENAT: ``vq-f16-jax.yaml``,
``taming/models/vqgan.py``) and by ReCAP's MaskGIT example: 1024 codes of 256 dimensions, stride 16,
256×256 images → 16×16 codes.

It is a VQGAN (Esser et al., CVPR 2021) with the changes MaskGIT made for speed (its model card:
"the non-local layers are removed"), so it is *not* the taming network that
:class:`mgen.tokenizers.vq.VQTokenizer` loads:

* no attention blocks anywhere (the config's ``attn_resolutions`` is ignored by this network);
* no ``quant_conv`` / ``post_quant_conv``: the encoder's 1×1 ``conv_out`` gives the 256-d vectors that are
  quantised directly, and the decoder's ``conv_in`` reads the code vectors;
* the 3×3 convolutions of the residual blocks and the encoder's ``conv_in`` have no bias;
* the encoder downsamples by 2×2 average pooling (no conv), the decoder upsamples by nearest ×2 + a 3×3 conv;
* when a residual block changes the width, the 1×1 ``nin_shortcut`` (out→out channels, no bias) is applied
  to the block's *output* h, and the block returns ``shortcut(h) + h`` (the input x is dropped) — as in the
  JAX original, which the converted checkpoint requires;
* the decoder has ``num_res_blocks`` blocks per level (taming's has one more);
* group norm with 32 groups and eps 1e-6, swish non-linearity;
* pixels are in **[0, 1]** (ENAT ``dataset.py`` divides by 255 and ``train.py`` clamps samples to [0, 1]).

The :class:`MaskGITJaxVQTokenizer` keeps mgen's Tokenizer protocol — ``encode`` takes images in [-1, 1],
``decode`` returns images nominally in [-1, 1] (unclamped) — and converts at the boundary;
:meth:`~MaskGITJaxVQTokenizer.encode_01` / :meth:`~MaskGITJaxVQTokenizer.decode_01` work in the network's
own [0, 1] range (the official ``VQModel.encode`` / ``decode_code`` numbers).

Module and parameter names follow the official state dict (``encoder.down.0.block.0.conv1.weight``,
``decoder.up.1.upsample.conv.bias``, ``quantize.embedding.weight``, ...), so the official file loads
without a key mapping and :meth:`~MaskGITJaxVQTokenizer.save_pretrained` writes the same names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mgen import registry
from mgen.errors import UserError, WeightsError
from mgen.families import get_family
from mgen.fileio import atomic_dir
from mgen.hub import iter_state_dicts, load_checkpoint, save_safetensors
from mgen.tokenizers.base import (CONFIG_NAME, ArchAliasesMixin, Float32Islands, build_from_arch, check_state_dict,
                                  config_arch, finish, folder_of, load_saved_folder, metadata_config, read_json,
                                  registry_entry, resolve_name, split_loading_kwargs)
from mgen.tokenizers.checks import check_images
from mgen.tokenizers.lightning import load_lightning_checkpoint

CLASS_NAME = "MaskGITJaxVQTokenizer"
NETWORK = "maskgit-jax"  # the registry ``arch.network`` value that selects this tokenizer
#: other spellings ``__init__`` accepts (the official YAML's and the registry's): checked, converted, not stored
ALIASES = ("network", "embed_dim", "stride", "n_embed", "out_ch", "attn_resolutions", "pixel_range", "double_z",
           "dropout")


@dataclass(frozen=True)
class MaskGITJaxVQConfig:
    """Architecture numbers. Defaults: ENAT's ``vq-f16-jax.yaml`` (embed_dim 256, n_embed 1024, ch 128,
    ch_mult [1, 1, 2, 2, 4], num_res_blocks 2, z_channels 256, resolution 256)."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 1024
    resolution: int = 256
    norm_num_groups: int = 32  # taming Normalize(): GroupNorm(32, eps=1e-6)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        ints = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ch_mult"}
        for k, v in ints.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"MaskGIT VQGAN config: {k} must be a positive integer, got {v!r}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise UserError(f"MaskGIT VQGAN config: ch_mult must be a non-empty list of positive integers, got {list(self.ch_mult)}")
        if self.codebook_size < 2:
            raise UserError(f"MaskGIT VQGAN config: codebook_size must be >= 2, got {self.codebook_size}")
        for c in {self.ch * m for m in self.ch_mult}:
            if c % self.norm_num_groups:
                raise UserError(f"MaskGIT VQGAN config: width {c} is not divisible by norm_num_groups {self.norm_num_groups}")

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_mapping(cls, arch: dict[str, Any]) -> "MaskGITJaxVQConfig":
        """From a config.json / registry ``arch`` mapping. Accepts the official YAML names too
        (``n_embed``, ``embed_dim`` (must equal ``z_channels``: no quant_conv), ``out_ch``); ``network``,
        ``stride``, ``attn_resolutions``, ``dropout``, ``double_z`` and ``_``-prefixed keys are checked or ignored."""
        a = {k: v for k, v in dict(arch).items() if not str(k).startswith("_")}
        network = a.pop("network", NETWORK)
        if network != NETWORK:
            raise UserError(f"MaskGIT VQGAN config: network {network!r} is not {NETWORK!r}")
        for official, ours in (("n_embed", "codebook_size"), ("out_ch", "out_channels")):
            if official in a:
                a.setdefault(ours, a.pop(official))
        embed_dim = a.pop("embed_dim", None)
        stride = a.pop("stride", None)
        a.pop("attn_resolutions", None)  # no attention in this network (ENAT's Encoder/Decoder never build it)
        a.pop("pixel_range", None)
        if a.pop("double_z", False):
            raise UserError("MaskGIT VQGAN config: double_z must be false (a VQ encoder has one output per code dim)")
        if float(a.pop("dropout", 0.0) or 0.0) != 0.0:
            raise UserError("MaskGIT VQGAN config: dropout must be 0 (inference network)")
        known = {f.name for f in fields(cls)}
        bad = set(a) - known
        if bad:
            raise UserError(f"MaskGIT VQGAN config: unknown keys {sorted(bad)}; allowed {sorted(known)}")
        try:
            cfg = cls(**{k: (tuple(v) if k == "ch_mult" else v) for k, v in a.items()})
        except TypeError as e:
            raise UserError(f"MaskGIT VQGAN config: {e}") from None
        if embed_dim is not None and int(embed_dim) != cfg.z_channels:
            raise UserError(f"MaskGIT VQGAN config: embed_dim {embed_dim} must equal z_channels {cfg.z_channels} "
                            "(this VQGAN has no quant_conv)")
        if stride is not None and int(stride) != cfg.stride:
            raise UserError(f"MaskGIT VQGAN config: stride {stride} does not match ch_mult (stride {cfg.stride})")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d


def _swish(x: torch.Tensor) -> torch.Tensor:
    # written x·sigmoid(x) as in the reference (not F.silu) so the same weights give bit-identical codes
    return x * torch.sigmoid(x)


class _ResBlock(nn.Module):
    """norm → swish → conv3×3 → norm → swish → conv3×3 (bias-free); the shortcut, when the width
    changes, is a bias-free 1×1 conv of the block's own output (JAX MaskGIT's ResBlock)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.changes_width = cin != cout
        if self.changes_width:
            self.nin_shortcut = nn.Conv2d(cout, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        skip = self.nin_shortcut(h) if self.changes_width else x
        return skip + h


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (residual blocks) and an optional resampler."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)


class _Middle(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = _ResBlock(channels, channels, groups)
        self.block_2 = _ResBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class _Encoder(nn.Module):
    def __init__(self, c: MaskGITJaxVQConfig) -> None:
        super().__init__()
        g = c.norm_num_groups
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1, bias=False)
        width = c.ch
        self.down = nn.ModuleList()
        for m in c.ch_mult:
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(_ResBlock(width, c.ch * m, g))
                width = c.ch * m
            self.down.append(_Level(blocks))
        self.mid = _Middle(width, g)
        self.norm_out = nn.GroupNorm(g, width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, c.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        last = len(self.down) - 1
        for i, level in enumerate(self.down):
            for blk in level.block:
                h = blk(h)
            if i != last:
                h = F.avg_pool2d(h, kernel_size=2, stride=2)  # the encoder's Downsample has no conv
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class _Decoder(nn.Module):
    def __init__(self, c: MaskGITJaxVQConfig) -> None:
        super().__init__()
        g = c.norm_num_groups
        width = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, width, 3, padding=1)
        self.mid = _Middle(width, g)
        levels: list[_Level] = []
        for i in reversed(range(len(c.ch_mult))):  # built coarse → fine, stored fine → coarse (up[0] is full size)
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(_ResBlock(width, c.ch * c.ch_mult[i], g))
                width = c.ch * c.ch_mult[i]
            level = _Level(blocks)
            if i != 0:
                level.upsample = _Upsample(width)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(g, width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for blk in level.block:
                h = blk(h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class _Embedding(Float32Islands, nn.Embedding):
    """The codebook's ``nn.Embedding``: float32 under ``.to(torch.bfloat16)`` (the nearest-code search)."""

    _fp32_tensors = ("weight",)


class _Codebook(nn.Module):
    def __init__(self, num_codes: int, dim: int) -> None:
        super().__init__()
        self.embedding = _Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """argmin_k ‖z − e_k‖², expanded as ‖z‖² + ‖e_k‖² − 2 z·e_k in that order (taming's
        ``VectorQuantizer2``, which ENAT uses), so near-ties break the same way as the reference; in float32."""
        flat = flat.float()
        e = self.embedding.weight.float()
        d = flat.pow(2).sum(dim=1, keepdim=True) + e.pow(2).sum(dim=1) - 2 * (flat @ e.t())
        return d.argmin(dim=1)


def looks_like(state_dict: Mapping[str, Any]) -> bool:
    """Whether a bare state dict is the official MaskGIT (JAX) VQGAN (``vqgan_jax_strongaug.ckpt``): taming-style
    names, bias-free ``encoder.conv_in``, no ``quant_conv``, a ``quantize.embedding``. Pure key inspection."""
    return is_maskgit_jax_state_dict(state_dict)


class MaskGITJaxVQTokenizer(ArchAliasesMixin, ModelMixin, ConfigMixin):
    """Discrete tokenizer: images in [-1, 1] ↔ code indices (B, H/16, W/16) of the MaskGIT (JAX) VQGAN.

    The config fields are those of :class:`MaskGITJaxVQConfig` (``self.arch``, validated); ``__init__`` also takes
    the registry's / official YAML's spellings (``network``, ``embed_dim``, ``stride``, ``n_embed``, ``out_ch``, ...),
    checked and not stored. Under ``.to(torch.bfloat16)`` the convolutions run in bf16, the codebook and the
    nearest-code distances stay float32 and ``decode`` returns float32.
    """

    config_name = CONFIG_NAME
    ignore_for_config = list(ALIASES)
    _keep_in_fp32_modules = ["quantize"]
    arch_network = NETWORK  # registry entries with ``arch.network: maskgit-jax`` name this class

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 256,
                 codebook_size: int = 1024, resolution: int = 256, norm_num_groups: int = 32, *,
                 network: str | None = None, embed_dim: int | None = None, stride: int | None = None,
                 n_embed: int | None = None, out_ch: int | None = None, attn_resolutions: Any = None,
                 pixel_range: Any = None, double_z: bool | None = None, dropout: float | None = None) -> None:
        super().__init__()
        names = [f.name for f in fields(MaskGITJaxVQConfig)]
        unset = set(self.config.get("_use_default_values", []))
        mapping: dict[str, Any] = {k: self.config[k] for k in names if k not in unset}
        aliases = dict(zip(ALIASES, (network, embed_dim, stride, n_embed, out_ch, attn_resolutions, pixel_range,
                                     double_z, dropout)))
        for k, v in aliases.items():
            if v is not None:
                if k in ("n_embed", "out_ch") and {"n_embed": "codebook_size", "out_ch": "out_channels"}[k] in mapping:
                    raise UserError(f"MaskGIT VQGAN config: give {k} or its mgen name, not both")
                mapping[k] = v
        cfg = MaskGITJaxVQConfig.from_mapping({**{k: self.config[k] for k in names}, **mapping})
        self.arch = cfg
        self.register_to_config(**cfg.to_dict(), _use_default_values=[])
        self.encoder = _Encoder(cfg)
        self.decoder = _Decoder(cfg)
        self.quantize = _Codebook(cfg.codebook_size, cfg.z_channels)

    # -- properties -------------------------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return 1.0  # discrete: generators see indices

    @property
    def codebook_size(self) -> int:
        return self.arch.codebook_size

    @property
    def stride(self) -> int:
        return self.arch.stride

    @property
    def in_channels(self) -> int:
        return self.arch.in_channels

    @property
    def image_size(self) -> int:
        return self.arch.resolution

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: Mapping[str, Any] | MaskGITJaxVQConfig | None = None) -> "MaskGITJaxVQTokenizer":
        """Random weights from a registry ``arch`` mapping (or a :class:`MaskGITJaxVQConfig`)."""
        if isinstance(arch, MaskGITJaxVQConfig):
            arch = arch.to_dict()
        return build_from_arch(cls, dict(arch or {}), "MaskGIT VQGAN").eval()

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, config: Any = None,
                        **kwargs: Any) -> "MaskGITJaxVQTokenizer":
        """Load the official ``vqgan_jax_strongaug.ckpt`` (a flat state dict or ``{"state_dict": ...}``, read
        with mgen's safe loader), a folder written by :meth:`save_pretrained` (diffusers' loader; older mgen folders
        have the same layout), a single ``.safetensors`` file written by :meth:`save_file`, or the registered name
        ``maskgit-vqgan-jax``. ``config`` is accepted for the resolver (the official file's shapes give the
        architecture); ``torch_dtype`` is honoured."""
        dtype, rest = split_loading_kwargs(kwargs, cls.__name__)
        config_arch(config, cls, "the MaskGIT (JAX) VQGAN tokenizer")
        p = Path(os.fspath(path_or_name)).expanduser()
        if not p.exists():
            check_registered(str(path_or_name))
            _, p = resolve_name(str(path_or_name), cls, "the MaskGIT (JAX) VQGAN tokenizer")
        folder = folder_of(p)
        if folder is not None:
            if not (folder / CONFIG_NAME).is_file():
                raise WeightsError(f"{folder}: no {CONFIG_NAME} (expected a folder written by {CLASS_NAME}.save_pretrained)")
            cls_name = read_json(folder / CONFIG_NAME).get("_class_name", CLASS_NAME)
            if cls_name != CLASS_NAME:
                raise WeightsError(f"{folder}: holds a {cls_name}, not a {CLASS_NAME}")
            tok = load_saved_folder(cls, folder, rest)
        else:
            tok = cls._from_file(p)
        return finish(tok, dtype)

    @classmethod
    def _from_file(cls, path: Path) -> "MaskGITJaxVQTokenizer":
        if path.suffix == ".safetensors":
            sd = load_checkpoint(path)
            config = metadata_config(path)
            if config is not None:
                if config.get("_class_name", CLASS_NAME) != CLASS_NAME:
                    raise WeightsError(f"{path}: holds a {config.get('_class_name')}, not a {CLASS_NAME}")
                return cls._build(MaskGITJaxVQConfig.from_mapping(config), sd, str(path))
        else:
            ckpt = load_lightning_checkpoint(path)
            sd = iter_state_dicts(ckpt, ("state_dict", "model")) or ckpt
        if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsError(f"{path}: no state dict found (expected {{'state_dict': ...}} or a flat dict of tensors)")
        sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}  # GAN/LPIPS training state, if any
        return cls._build(infer_config(sd, str(path)), sd, str(path))

    @classmethod
    def _build(cls, config: MaskGITJaxVQConfig, sd: dict[str, torch.Tensor], what: str) -> "MaskGITJaxVQTokenizer":
        tok = cls(**config.to_dict())
        own = tok.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        if missing or unexpected:
            hint = ""
            if any(k.startswith(("quant_conv.", "post_quant_conv.")) for k in unexpected) or any(
                    ".attn_1." in k or ".attn." in k for k in unexpected):
                hint = " (this looks like a taming VQGAN with attention/quant_conv: load it with VQTokenizer)"
            raise WeightsError(f"{what}: weights do not match the MaskGIT (JAX) VQGAN (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}){hint}")
        for k, v in sd.items():
            if torch.is_tensor(v) and not v.is_floating_point():
                raise WeightsError(f"{what}: {k} is {v.dtype}, expected floating-point weights")
        check_state_dict(own, sd, what, "MaskGIT (JAX) VQGAN")
        tok.load_state_dict({k: v.float() for k, v in sd.items()})
        return tok.eval()

    # -- saving -----------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"_class_name": CLASS_NAME, "network": NETWORK, **self.arch.to_dict(), "pixel_range": [0, 1]}

    def save_file(self, path: str | os.PathLike) -> None:
        """One self-describing ``.safetensors`` file (config in its metadata)."""
        save_safetensors(self.state_dict(), path, metadata={"config": json.dumps(self.config_dict()), "format": "pt"})

    # -- Tokenizer protocol -----------------------------------------------------------------------
    def _check(self, x: Any) -> torch.Tensor:
        return check_images(x, self.in_channels, self.stride)

    def encode_latents_01(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → the encoder's continuous vectors (B, 256, h, w), before quantisation."""
        x01 = self._check(x01)
        param = self.encoder.conv_in.weight
        return self.encoder(x01.to(device=param.device, dtype=param.dtype)).float()

    def encode_01(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in the network's own [0, 1] range → code indices (B, h, w) (official ``VQModel.encode``)."""
        z = self.encode_latents_01(x01)
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        return self.quantize.nearest(flat).reshape(b, h, w)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) → code indices, LongTensor (B, H/16, W/16)."""
        x = self._check(x)
        return self.encode_01(x * 0.5 + 0.5)

    def check_indices(self, indices: Any) -> torch.Tensor:
        if not torch.is_tensor(indices) or indices.dim() != 3 or indices.is_floating_point() or indices.dtype == torch.bool:
            raise UserError(f"code indices: expected an integer tensor (B, h, w), got {getattr(indices, 'shape', type(indices).__name__)}"
                            f"{'' if not torch.is_tensor(indices) else ' of ' + str(indices.dtype)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise UserError(f"code indices must be in [0, {self.codebook_size}), got [{int(indices.min())}, {int(indices.max())}]")
        return indices.long()

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) → code vectors (B, 256, h, w)."""
        idx = self.check_indices(indices).to(self.quantize.embedding.weight.device)
        return F.embedding(idx, self.quantize.embedding.weight.float()).permute(0, 3, 1, 2).contiguous()

    def decode_01(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices → the network's raw output, nominally in [0, 1] (official ``VQModel.decode_code``)."""
        param = self.decoder.conv_in.weight
        return self.decoder(self.lookup(indices).to(param.dtype)).float()

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) → images, nominally in [-1, 1]; not clamped (pipelines and writers clamp)."""
        return self.decode_01(indices) * 2.0 - 1.0


def check_registered(name: str) -> None:
    """A registered name must be this tokenizer's config (its family's class, or ``arch.network: maskgit-jax``)."""
    registry_entry(name, MaskGITJaxVQTokenizer, "the MaskGIT (JAX) VQGAN tokenizer")


def is_maskgit_jax_tokenizer(spec: str | os.PathLike) -> bool:
    """Whether a tokenizer name or path is this tokenizer: a registered name whose config selects this class,
    a folder / ``.safetensors`` file saved by this class, or an official checkpoint file in the MaskGIT (JAX)
    layout (read with the safe loader to look at its keys)."""
    p = Path(os.fspath(spec)).expanduser()
    if not p.exists():
        if not any(e.name == str(spec) for e in registry.list_models()):
            return False
        entry = registry.get(str(spec))
        return (entry.arch.get("network") == NETWORK
                or get_family(entry.family).model_class_name == CLASS_NAME)
    try:
        if p.is_dir():
            cfg = p / CONFIG_NAME
            return cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == CLASS_NAME
        if p.suffix == ".safetensors":
            return (metadata_config(p) or {}).get("_class_name") == CLASS_NAME
        ckpt = load_lightning_checkpoint(p)
        return is_maskgit_jax_state_dict(iter_state_dicts(ckpt, ("state_dict", "model")) or ckpt)
    except (OSError, ValueError, AttributeError):  # unreadable: let the chosen loader report it
        return False


_DOWN_BLOCK = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")


def is_maskgit_jax_state_dict(sd: Mapping[str, Any]) -> bool:
    """True for the MaskGIT (JAX) VQGAN layout: taming-style names, bias-free ``encoder.conv_in``, no
    ``quant_conv``, a ``quantize.embedding``."""
    return ("encoder.conv_in.weight" in sd and "encoder.conv_in.bias" not in sd and "quantize.embedding.weight" in sd
            and "quant_conv.weight" not in sd and "decoder.conv_in.weight" in sd)


def infer_config(sd: dict[str, torch.Tensor], what: str = "checkpoint") -> MaskGITJaxVQConfig:
    """The architecture of an official-layout state dict, read from its shapes and key names."""
    if not is_maskgit_jax_state_dict(sd):
        hint = " (a taming VQGAN: load it with VQTokenizer)" if "quant_conv.weight" in sd else ""
        raise WeightsError(f"{what}: not a MaskGIT (JAX) VQGAN state dict (expected bias-free encoder.conv_in.weight, "
                           f"decoder.conv_in.weight, quantize.embedding.weight and no quant_conv){hint}")
    blocks: dict[int, int] = {}
    widths: dict[int, int] = {}
    for k, v in sd.items():
        m = _DOWN_BLOCK.match(k)
        if m:
            lvl, blk = int(m.group(1)), int(m.group(2))
            blocks[lvl] = max(blocks.get(lvl, 0), blk + 1)
            if blk == 0:
                widths[lvl] = int(v.shape[0])
    if not blocks or sorted(blocks) != list(range(len(blocks))) or len(set(blocks.values())) != 1:
        raise WeightsError(f"{what}: cannot read the encoder levels from the key names")
    conv_in = sd["encoder.conv_in.weight"]
    ch = int(conv_in.shape[0])
    if any(widths[i] % ch for i in widths):
        raise WeightsError(f"{what}: level widths {widths} are not multiples of ch {ch}")
    emb = sd["quantize.embedding.weight"]
    z = int(sd["encoder.conv_out.weight"].shape[0])
    if emb.dim() != 2 or int(emb.shape[1]) != z:
        raise WeightsError(f"{what}: codebook shape {tuple(emb.shape)} does not match the encoder's {z} output channels")
    ch_mult = tuple(widths[i] // ch for i in range(len(widths)))
    try:
        return MaskGITJaxVQConfig(in_channels=int(conv_in.shape[1]), out_channels=int(sd["decoder.conv_out.weight"].shape[0]),
                                  ch=ch, ch_mult=ch_mult, num_res_blocks=blocks[0], z_channels=z,
                                  codebook_size=int(emb.shape[0]))  # 32 groups, as the reference always builds
    except (UserError, KeyError) as e:
        raise WeightsError(f"{what}: {e}") from None


def convert_maskgit_jax_vqgan(src: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> None:
    """`mgen convert maskgit-vqgan-jax SRC OUT`: ``vqgan_jax_strongaug.ckpt`` → a :class:`MaskGITJaxVQTokenizer`
    folder, built in a temporary sibling and renamed into place (:func:`mgen.fileio.atomic_dir`)."""
    with atomic_dir(out, force=force) as tmp:  # refused before anything is read if out is taken
        tok = MaskGITJaxVQTokenizer.from_pretrained(Path(src))
        tok.save_pretrained(tmp)
