"""Representation autoencoder (RAE) as an mgen tokenizer.

Paper: Zheng, Xie et al., "Diffusion Transformers with Representation Autoencoders" (2025). A frozen,
pretrained representation encoder (DINOv2-with-registers, SigLIP2, MAE, ...) maps an image to patch
tokens; those tokens (class/register tokens dropped) are the latents. The encoder's final LayerNorm is
used without its affine parameters (§3, as in the official code and diffusers' ``AutoencoderRAE``).
Latents are normalised with dataset statistics (per position: mean and variance of shape (C, h, w)):
z' = (z − mean) / sqrt(var + 1e-5) as the official code (bytetriper/RAE ``src/stage1/rae.py``), or
(z − mean) / (std + 1e-5) as diffusers' ``AutoencoderRAE`` (``latent_norm`` = "var_eps" / "std_eps").
A ViT decoder (MAE-style: linear embed, a learnable [CLS] token, fixed 2-D sin-cos positions,
transformer blocks, LayerNorm, linear patch head) is trained to map *noise-augmented* latents back to
pixels: z̃ = z + σ·ε with σ ~ U(0, τ) per sample, τ = 0.8 (§3.2, "noise-augmented decoding"), with an L1
loss plus optional LPIPS and PatchGAN terms (:mod:`mgen.tokenizers.patchgan`). Encoder inputs are resized to the encoder's
input size (RAE feeds 224×224 to the 14-patch DINOv2 for 256×256 images: 16×16 tokens) and normalised
with the encoder's image mean/std; the decoder's patch size sets the output resolution.

The decoder's blocks are :class:`mgen.nn.ViTBlock` (one attention function for every model);
diffusers ``AutoencoderRAE`` folders load after a key mapping (:func:`_diffusers_decoder_to_mgen`), and so do
the official stage-1 parts (:meth:`RAETokenizer.from_official`: the ``GeneralDecoder`` state dict ``model.pt``,
its ViT-MAE-style ``config.json`` and the ``stat.pt`` statistics; :func:`_official_decoder_to_mgen`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderRAE
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import AutoConfig, AutoModel, ViTMAEConfig, ViTMAEForPreTraining

from mgen.errors import UserError, WeightsError
from mgen.fileio import atomic_dir
from mgen.hub import load_checkpoint, save_safetensors
from mgen.nn import ViTBlock, sincos_2d
from mgen.nn.embeddings import sincos_1d
from mgen.tokenizers.base import (CONFIG_NAME, WEIGHTS_NAME, Float32Islands, build_from_arch, check_state_dict,
                                  config_arch, config_kwargs, finish, folder_of, load_saved_folder, metadata_config,
                                  plain, read_json, resolve_name, split_loading_kwargs)
from mgen.tokenizers.checks import check_images, check_latents
from mgen.tokenizers.training import _train_settings, adversarial_loss, attach_discriminator, load_perceptual

LEGACY_WEIGHTS_NAME = "model.safetensors"  # older mgen RAE folders
RAE_NOISE_TAU = 0.8  # Zheng et al. 2025, §3.2
STAT_EPS = 1e-5  # bytetriper/RAE src/stage1/rae.py (eps) and diffusers AutoencoderRAE (+1e-5)
LATENT_NORMS = ("var_eps", "std_eps")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -- the frozen encoder -----------------------------------------------------------------------------

def _final_norm(model: nn.Module) -> nn.Module | None:
    for path in ("layernorm", "post_layernorm", "vision_model.post_layernorm"):
        m = model
        for part in path.split("."):
            m = getattr(m, part, None)
            if m is None:
                break
        if isinstance(m, nn.LayerNorm):
            return m
    return None


def strip_final_norm_affine(model: nn.Module) -> None:
    """Drop the affine parameters of the encoder's final LayerNorm (RAE uses the plain normalised tokens)."""
    norm = _final_norm(model)
    if norm is not None:
        norm.weight, norm.bias = None, None
        norm.elementwise_affine = False


def _patch_size(config: Any) -> int:
    cfg = getattr(config, "vision_config", None) or config
    p = getattr(cfg, "patch_size", None)
    if p is None:
        raise UserError(f"encoder config {type(config).__name__} has no patch_size")
    return int(p if isinstance(p, int) else p[0])


def encoder_from_config(config: dict[str, Any]) -> nn.Module:
    """A transformers vision model (random weights) from its ``config.to_dict()``."""
    cfg = {k: v for k, v in dict(config).items() if k != "auto_map"}  # no code named by a config ever runs here
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise WeightsError("encoder config has no model_type")
    try:
        conf = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"encoder config: {str(e).splitlines()[0]}") from None
    if model_type == "vit_mae":
        conf.mask_ratio = 0.0
    model = AutoModel.from_config(conf, trust_remote_code=False)
    return getattr(model, "vision_model", None) if model_type in ("siglip", "siglip2") else model


def load_encoder(folder: str | os.PathLike, trust_remote_code: bool = False) -> nn.Module:
    """A pretrained transformers vision backbone from a local folder: never downloads, never asks on stdin, and
    runs code that the folder's ``config.json`` names (``auto_map``) only with ``trust_remote_code=True``."""
    folder = Path(os.fspath(folder)).expanduser()
    if not (folder / CONFIG_NAME).is_file():
        raise WeightsError(f"{folder}: not a transformers model folder (no config.json)")
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=bool(trust_remote_code))
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not trust_remote_code and ("trust_remote_code" in str(e) or "custom code" in str(e)):
            msg = "its config.json names code of its own (auto_map); mgen runs it only with trust_remote_code=True"
        raise WeightsError(f"{folder}: could not load the encoder ({msg[:300]})") from None
    if model.config.model_type in ("siglip", "siglip2") and hasattr(model, "vision_model"):
        model = model.vision_model
    if getattr(model.config, "model_type", "") == "vit_mae":
        model.config.mask_ratio = 0.0
    return model


def encoder_tokens(encoder: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch tokens (B, N, C) of a transformers vision model, with leading [CLS]/register tokens dropped."""
    cfg = encoder.config
    p = _patch_size(cfg)
    h, w = pixel_values.shape[-2:]
    n = (h // p) * (w // p)
    kwargs: dict[str, Any] = {}
    if cfg.model_type == "vit_mae":
        # MAE shuffles patches by `noise`; an increasing ramp keeps their order (and mask_ratio is 0).
        kwargs["noise"] = torch.arange(n, device=pixel_values.device, dtype=pixel_values.dtype).expand(pixel_values.shape[0], n)
    if h != getattr(cfg, "image_size", h):
        kwargs["interpolate_pos_encoding"] = True
    out = encoder(pixel_values=pixel_values, **kwargs).last_hidden_state
    if out.shape[1] < n:
        raise UserError(f"encoder returned {out.shape[1]} tokens for {n} patches")
    return out[:, out.shape[1] - n:]


# -- the trainable decoder --------------------------------------------------------------------------

def _sincos_2d_scaled(dim: int, grid: int, scale: float) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table (a zero row for [CLS] first) at positions ``scale·(0 … grid-1)``.

    ``scale`` = 1 is MAE / the official RAE decoder; diffusers' ``AutoencoderRAE`` uses
    ``get_2d_sincos_pos_embed(base_size=16)``, i.e. ``scale = 16 / grid`` (the same table when grid = 16).
    """
    if scale == 1.0:
        return sincos_2d(dim, grid, extra_tokens=1)
    pos = torch.arange(grid, dtype=torch.float64) * scale
    rows, cols = pos[:, None].expand(grid, grid), pos[None, :].expand(grid, grid)
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb]).float()


class RAEDecoder(nn.Module):
    """MAE-style ViT decoder: tokens (B, N, C) → pixels (B, 3, g·p, g·p) in the encoder's normalised space."""

    def __init__(self, latent_dim: int, grid: int, patch_size: int, hidden_size: int = 512, depth: int = 8,
                 num_heads: int = 16, mlp_ratio: float = 4.0, out_channels: int = 3, layer_norm_eps: float = 1e-12,
                 pos_scale: float = 1.0) -> None:
        super().__init__()
        self.grid, self.patch_size, self.out_channels = int(grid), int(patch_size), int(out_channels)
        self.embed = nn.Linear(latent_dim, hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.register_buffer("pos_embed", _sincos_2d_scaled(hidden_size, self.grid, pos_scale)[None], persistent=False)
        norm = partial(nn.LayerNorm, eps=layer_norm_eps)
        self.blocks = nn.ModuleList(ViTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(depth))
        self.norm = norm(hidden_size)
        self.pred = nn.Linear(hidden_size, self.patch_size ** 2 * self.out_channels)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.pred(self.norm(x))[:, 1:]
        b, g, p, c = x.shape[0], self.grid, self.patch_size, self.out_channels
        x = x.reshape(b, g, g, p, p, c)  # patches are (row, col, c) ordered, as MAE's unpatchify
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, g * p, g * p)


# -- the tokenizer ----------------------------------------------------------------------------------

#: a loaded encoder module for the next ``RAETokenizer.__init__`` (so a pretrained encoder is not built twice)
_PREBUILT_ENCODER: contextvars.ContextVar[nn.Module | None] = contextvars.ContextVar("mgen_rae_encoder", default=None)
_DECODER_DEFAULTS = {"hidden_size": 512, "depth": 8, "num_heads": 16, "mlp_ratio": 4.0, "patch_size": 16,
                     "layer_norm_eps": 1e-12, "pos_scale": 1.0}
_STATS = ("pixel_mean", "pixel_std", "latents_mean", "latents_var")
_LEGACY_KEYS = {"image_mean": "pixel_mean", "image_std": "pixel_std"}  # buffer names of older mgen files


@contextlib.contextmanager
def _prebuilt_encoder(encoder: nn.Module) -> Iterator[None]:
    token = _PREBUILT_ENCODER.set(encoder)
    try:
        yield
    finally:
        _PREBUILT_ENCODER.reset(token)


def _encoder_config_dict(encoder: nn.Module) -> dict[str, Any]:
    """The JSON config of a transformers encoder, without what must not travel (auto_map: code; dtype)."""
    cfg = encoder.config.to_dict()
    for k in ("auto_map", "dtype", "torch_dtype", "_name_or_path", "_commit_hash", "_attn_implementation_autoset"):
        cfg.pop(k, None)
    cfg["model_type"] = encoder.config.model_type
    return plain(cfg)


class RAETokenizer(Float32Islands, ModelMixin, ConfigMixin):
    """Continuous tokenizer: images in [-1, 1] ↔ normalised representation-encoder patch tokens (B, C, h, w).

    ``encode(x)`` returns the normalised tokens (deterministic: the posterior is a point), ``decode(z)``
    maps them back to images in [-1, 1]; ``scaling_factor`` is 1 (the statistics already normalise).

    Config fields: ``encoder_config`` (the transformers config of the frozen encoder, ``model_type`` included; a
    registry ``arch.encoder`` without one is a ViT-MAE), ``decoder_config`` (the ViT decoder's sizes; the
    registry spells the two ``encoder`` / ``decoder``, which ``__init__`` also takes), the encoder's
    input size and image mean/std, ``noise_tau``, ``strip_norm_affine``, ``scaling_factor``, ``latent_norm``.
    The frozen encoder's weights are part of the state dict (``encoder.*``), so ``save_pretrained`` /
    ``from_pretrained`` restore the whole tokenizer without the encoder's folder. Under ``.to(torch.bfloat16)``
    the encoder and decoder run in bf16; the image and latent statistics stay float32 and the normalisation,
    the noise augmentation and the outputs of ``encode`` / ``decode`` are float32.
    """

    config_name = CONFIG_NAME
    ignore_for_config = ["encoder", "decoder"]  # the registry's spellings of the two config fields
    _keep_in_fp32_modules = list(_STATS)
    _fp32_tensors = _STATS

    @register_to_config
    def __init__(self, encoder_config: Mapping[str, Any] | None = None,
                 decoder_config: Mapping[str, Any] | None = None, encoder_input_size: int | None = None,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 noise_tau: float = RAE_NOISE_TAU, strip_norm_affine: bool = True, scaling_factor: float = 1.0,
                 latent_norm: str = "var_eps", *, encoder: Mapping[str, Any] | None = None,
                 decoder: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if encoder is not None and encoder_config is not None or decoder is not None and decoder_config is not None:
            raise UserError("RAE arch: give encoder/decoder or encoder_config/decoder_config, not both")
        encoder = encoder if encoder is not None else encoder_config
        decoder = decoder if decoder is not None else decoder_config
        if latent_norm not in LATENT_NORMS:
            raise UserError(f"latent_norm must be one of {LATENT_NORMS}, got {latent_norm!r}")
        enc = _PREBUILT_ENCODER.get()
        if enc is None:
            enc_cfg = encoder
            if not isinstance(enc_cfg, Mapping):
                raise UserError("RAE arch: 'encoder' must be the encoder's transformers config (a mapping)")
            enc = encoder_from_config({"model_type": "vit_mae", **enc_cfg})
        self.encoder = enc.eval().requires_grad_(False)
        if strip_norm_affine:
            strip_final_norm_affine(self.encoder)
        cfg = enc.config
        self.encoder_patch = _patch_size(cfg)
        size = encoder_input_size or getattr(getattr(cfg, "vision_config", cfg), "image_size", 224)
        self.encoder_input_size = int(size if isinstance(size, int) else size[0])
        if self.encoder_input_size % self.encoder_patch:
            raise UserError(f"encoder input size {self.encoder_input_size} is not a multiple of its patch size {self.encoder_patch}")
        self.grid = self.encoder_input_size // self.encoder_patch
        self.latent_dim = int(getattr(cfg, "hidden_size"))
        unknown = sorted(set(decoder or {}) - set(_DECODER_DEFAULTS))
        if unknown:
            raise UserError(f"RAE decoder: unknown keys {unknown}; allowed {sorted(_DECODER_DEFAULTS)}")
        dc = {**_DECODER_DEFAULTS, **dict(decoder or {})}
        self.decoder = RAEDecoder(self.latent_dim, self.grid, int(dc["patch_size"]), int(dc["hidden_size"]), int(dc["depth"]),
                                  int(dc["num_heads"]), float(dc["mlp_ratio"]), 3, float(dc["layer_norm_eps"]),
                                  float(dc["pos_scale"]))
        self.image_size = self.grid * int(dc["patch_size"])
        # (not called image_mean/std: those names are config fields, which ConfigMixin serves as attributes)
        self.register_buffer("pixel_mean", torch.tensor(list(image_mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(list(image_std), dtype=torch.float32).view(1, -1, 1, 1))
        shape = (self.latent_dim, self.grid, self.grid)
        self.register_buffer("latents_mean", torch.zeros(shape))
        self.register_buffer("latents_var", torch.ones(shape))
        self.register_to_config(encoder_config=_encoder_config_dict(enc), decoder_config=plain(dc),
                                encoder_input_size=self.encoder_input_size, image_mean=plain(list(image_mean)),
                                image_std=plain(list(image_std)), _use_default_values=[])

    def train(self, mode: bool = True) -> "RAETokenizer":
        super().train(mode)
        self.encoder.eval()  # frozen: always in inference mode
        return self

    @property
    def stride(self) -> int:
        return int(self.decoder.patch_size)

    @property
    def image_mean(self) -> torch.Tensor:
        """The encoder's input mean (1, 3, 1, 1), float32."""
        return self.pixel_mean

    @property
    def image_std(self) -> torch.Tensor:
        return self.pixel_std

    @property
    def latent_norm(self) -> str:
        return str(self.config.latent_norm)

    @property
    def strip_norm_affine(self) -> bool:
        return bool(self.config.strip_norm_affine)

    @property
    def scaling_factor(self) -> float:
        return float(self.config.scaling_factor)

    @scaling_factor.setter
    def scaling_factor(self, value: float) -> None:
        self.register_to_config(scaling_factor=float(value))

    @property
    def noise_tau(self) -> float:
        """σ ~ U(0, τ) of the noise-augmented decoder training (RAE §3.2)."""
        return float(self.config.noise_tau)

    @noise_tau.setter
    def noise_tau(self, value: float) -> None:
        self.register_to_config(noise_tau=float(value))

    # -- construction ---------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        cfg = {k: plain(v) for k, v in self.config.items() if not k.startswith("_")}
        cfg["_class_name"] = type(self).__name__
        return cfg

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> "RAETokenizer":
        """Random weights (a random encoder too) from a registry ``arch`` mapping; unknown keys: ``UserError``."""
        return build_from_arch(cls, arch, "RAE")

    @classmethod
    def with_encoder(cls, encoder: nn.Module, decoder: Mapping[str, Any] | None = None, **fields: Any) -> "RAETokenizer":
        """A new RAE (untrained decoder, identity statistics) around an already loaded encoder module."""
        with _prebuilt_encoder(encoder):
            return cls(encoder_config=_encoder_config_dict(encoder), decoder_config=dict(decoder or {}), **fields)

    @classmethod
    def from_encoder(cls, encoder_folder: str | os.PathLike, decoder_config: Mapping[str, Any],
                     trust_remote_code: bool = False, **kwargs: Any) -> "RAETokenizer":
        """A new RAE (untrained decoder, identity statistics) on a pretrained encoder folder."""
        return cls.with_encoder(load_encoder(encoder_folder, trust_remote_code=trust_remote_code), decoder_config,
                                **kwargs)

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, config: Any = None, **kwargs: Any) -> "RAETokenizer":
        """A folder written by :meth:`save_pretrained` (diffusers' loader), an older mgen RAE folder or single
        ``.safetensors`` file (config in its metadata, as the shipped ``rae-digits``), a diffusers
        ``AutoencoderRAE`` folder, or a registered name (``rae-digits``). ``config`` is accepted for the
        resolver (the files carry their config); ``torch_dtype`` is honoured. Nothing is downloaded and no code
        from a folder runs."""
        dtype, rest = split_loading_kwargs(kwargs, cls.__name__)
        config_arch(config, cls, "an RAE tokenizer")
        p = Path(os.fspath(path_or_name)).expanduser()
        if not p.exists():
            _, p = resolve_name(str(path_or_name), cls, "an RAE tokenizer")
        folder = folder_of(p)
        if folder is not None:
            cfg_path = folder / CONFIG_NAME
            if not cfg_path.is_file():
                raise WeightsError(f"{folder}: no {CONFIG_NAME}")
            stored = read_json(cfg_path)
            if stored.get("_class_name") == "AutoencoderRAE":
                tok = cls._from_diffusers(folder)
            elif stored.get("_class_name") != cls.__name__:
                raise WeightsError(f"{folder}: holds a {stored.get('_class_name')}, not an RAE")
            elif (folder / WEIGHTS_NAME).is_file() or not (folder / LEGACY_WEIGHTS_NAME).is_file():
                tok = load_saved_folder(cls, folder, rest)
            else:  # an older mgen folder: config.json (encoder_config) + model.safetensors
                tok = cls._build(stored, folder / LEGACY_WEIGHTS_NAME)
        else:
            if p.suffix != ".safetensors":
                raise WeightsError(f"{p}: expected an RAE folder or an mgen .safetensors file")
            stored = metadata_config(p)
            if stored is None:
                raise WeightsError(f"{p}: no RAE config in the file's metadata")
            tok = cls._build(stored, p)
        return finish(tok, dtype)

    @classmethod
    def _build(cls, config: Mapping[str, Any], weights: Path) -> "RAETokenizer":
        """A tokenizer from a stored config (this class's, or the older ``encoder_config`` spelling, whose
        files used diffusers' ``std + eps`` normalisation) and its weights file."""
        cfg = config_kwargs(cls, config)  # (older files: encoder_config + decoder)
        cfg.setdefault("latent_norm", "std_eps")  # files written before the option existed
        try:
            tok = cls(**cfg)
        except (TypeError, ValueError, KeyError) as e:
            if isinstance(e, (UserError, WeightsError)):
                raise
            raise WeightsError(f"{weights}: bad RAE config ({e})") from None
        sd = {_LEGACY_KEYS.get(k, k): v for k, v in load_checkpoint(weights).items()}
        check_state_dict(tok.inference_state_dict(), sd, str(weights), "RAE")
        tok.load_state_dict(sd)
        return tok.eval()

    @classmethod
    def _from_diffusers(cls, folder: Path) -> "RAETokenizer":
        try:
            ref = AutoencoderRAE.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise WeightsError(f"{folder}: could not load the AutoencoderRAE folder ({str(e).splitlines()[0]})") from None
        c = ref.config
        dec = ref.decoder
        heads = dec.decoder_layers[0].attention.heads if len(dec.decoder_layers) else 1
        hidden = dec.decoder_hidden_size
        inter = dec.decoder_layers[0].intermediate.dense.out_features if len(dec.decoder_layers) else 4 * hidden
        decoder_config = {"hidden_size": hidden, "depth": len(dec.decoder_layers), "num_heads": heads,
                          "mlp_ratio": inter / hidden, "patch_size": dec.patch_size,
                          "layer_norm_eps": dec.decoder_norm.eps,
                          "pos_scale": 16.0 / math.isqrt(dec.num_patches)}  # diffusers' base_size=16
        tok = cls.with_encoder(ref.encoder, decoder_config, encoder_input_size=c.encoder_input_size,
                               image_mean=ref.encoder_mean.flatten().tolist(),
                               image_std=ref.encoder_std.flatten().tolist(), noise_tau=c.noise_tau,
                               strip_norm_affine=False, scaling_factor=float(c.scaling_factor), latent_norm="std_eps")
        # diffusers already built the encoder without the final affine: record it, so a reload strips it too
        tok.register_to_config(strip_norm_affine=True)
        tok.decoder.load_state_dict(_diffusers_decoder_to_mgen(dec.state_dict()))
        shape = tuple(tok.latents_mean.shape)
        # diffusers normalises (z - mean) / (std + 1e-5); mgen stores the variance: var = std².
        tok.latents_mean.copy_(_broadcast_stat(ref._latents_mean, shape))
        tok.latents_var.copy_(_broadcast_stat(ref._latents_std, shape) ** 2)
        return tok.eval()

    @classmethod
    def from_official(cls, encoder: str | Path | nn.Module, decoder_config: str | Path | dict[str, Any],
                      decoder_weights: str | Path | dict[str, torch.Tensor] | None = None,
                      stats: str | Path | None = None, encoder_input_size: int = 224, decoder_patch_size: int = 16,
                      noise_tau: float = RAE_NOISE_TAU, image_mean: Sequence[float] | None = None,
                      image_std: Sequence[float] | None = None, trust_remote_code: bool = False) -> "RAETokenizer":
        """The official stage-1 RAE (bytetriper/RAE ``src/stage1/rae.py``) from its parts.

        ``encoder``: a local transformers folder (DINOv2-with-registers, SigLIP2, ViT-MAE) or a loaded model;
        its ``preprocessor_config.json`` gives ``image_mean``/``image_std`` as ``AutoImageProcessor`` does there
        (ImageNet's otherwise). ``decoder_config``: the decoder's ``config.json`` (a folder such as
        ``configs/decoder/ViTXL`` or the file; ``decoder_*`` sizes, ``layer_norm_eps``, ``hidden_act`` gelu).
        ``decoder_weights``: the ``GeneralDecoder`` state dict (``model.pt`` from ``extract_decoder.py``, or a
        training checkpoint's ``{"ema": ...}``/``{"model": ...}`` with ``decoder.`` prefixes).
        ``stats``: ``stat.pt`` = ``{"mean", "var"}`` (normalisation ``(z − mean)/sqrt(var + 1e-5)``).
        ``encoder_input_size`` (224 for the 14-patch DINOv2 at 256 px; 256 for MAE/SigLIP2) and
        ``decoder_patch_size`` (16) are the official constructor's arguments. ``trust_remote_code``: run code
        that the encoder folder's ``config.json`` names (``auto_map``); off unless the caller opts in.
        """
        enc_folder = None
        if isinstance(encoder, nn.Module):
            enc = encoder
        else:
            enc_folder = Path(encoder).expanduser()
            enc = load_encoder(enc_folder, trust_remote_code=trust_remote_code)
        if image_mean is None or image_std is None:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            proc = enc_folder / "preprocessor_config.json" if enc_folder is not None else None
            if proc is not None and proc.is_file():
                try:
                    pc = json.loads(proc.read_text())
                except json.JSONDecodeError as e:
                    raise WeightsError(f"{proc}: not valid JSON ({e})") from None
                mean, std = pc.get("image_mean", mean), pc.get("image_std", std)
            image_mean = mean if image_mean is None else image_mean
            image_std = std if image_std is None else image_std
        dcfg = _official_decoder_config(decoder_config)
        hidden, inter = int(dcfg["decoder_hidden_size"]), int(dcfg["decoder_intermediate_size"])
        act = dcfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise WeightsError(f"RAE decoder config: hidden_act {act!r} is not supported (only 'gelu')")
        dec = {"hidden_size": hidden, "depth": int(dcfg["decoder_num_hidden_layers"]),
               "num_heads": int(dcfg["decoder_num_attention_heads"]), "mlp_ratio": inter / hidden,
               "patch_size": int(decoder_patch_size), "layer_norm_eps": float(dcfg.get("layer_norm_eps", 1e-12))}
        if int(dcfg.get("num_channels", 3)) != 3 or not dcfg.get("qkv_bias", True):
            raise WeightsError("RAE decoder config: only 3-channel decoders with qkv_bias are supported")
        tok = cls.with_encoder(enc, dec, encoder_input_size=int(encoder_input_size), image_mean=list(image_mean),
                               image_std=list(image_std), noise_tau=noise_tau, strip_norm_affine=True,
                               latent_norm="var_eps")
        if tok.decoder.blocks and tok.decoder.blocks[0].mlp.fc1.out_features != inter:
            raise WeightsError(f"RAE decoder config: intermediate size {inter} is not representable")
        if decoder_weights is not None:
            sd = decoder_weights if isinstance(decoder_weights, dict) else _official_decoder_state_dict(Path(decoder_weights))
            what = "decoder weights" if isinstance(decoder_weights, dict) else str(decoder_weights)
            mapped = _official_decoder_to_mgen(sd, what)
            own = tok.decoder.state_dict()
            missing = [k for k in own if k not in mapped]
            unexpected = [k for k in mapped if k not in own]
            if missing or unexpected:
                raise WeightsError(f"{what}: weights do not match the decoder config (missing {missing[:3]}, unexpected {unexpected[:3]})")
            for k, v in mapped.items():
                if own[k].shape != v.shape:
                    raise WeightsError(f"{what}: {k} has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}")
                if v.is_floating_point() and not torch.isfinite(v).all():
                    raise WeightsError(f"{what}: parameter {k} contains NaN or infinite values")
            pos = sd.get("decoder_pos_embed")
            if pos is not None and (pos.shape != tok.decoder.pos_embed.shape
                                    or not torch.allclose(pos.float(), tok.decoder.pos_embed, atol=1e-5)):
                raise WeightsError(f"{what}: decoder_pos_embed of shape {tuple(pos.shape)} is not the fixed 2-D sin-cos "
                                   f"table of a {tok.grid}x{tok.grid} grid (check encoder_input_size)")
            tok.decoder.load_state_dict({k: v.float() for k, v in mapped.items()})
        if stats is not None:
            tok.load_stats(stats)
        return tok.eval()

    def save_file(self, path: str | os.PathLike) -> None:
        """One self-describing ``.safetensors`` file (config in its metadata), as shipped in ``mgen/weights``."""
        save_safetensors(self.inference_state_dict(), path, metadata={"config": json.dumps(self.config_dict()), "format": "pt"})

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but a training-time discriminator."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("discriminator.")}

    # -- encode / decode ------------------------------------------------------------------------
    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images → the encoder's input: [0, 1], resized (bicubic) to its input size, mean/std-normalised."""
        x = (x.float() + 1) / 2
        if x.shape[-2:] != (self.encoder_input_size, self.encoder_input_size):
            x = F.interpolate(x, size=(self.encoder_input_size,) * 2, mode="bicubic", align_corners=False)
        return (x - self.pixel_mean.float()) / self.pixel_std.float()

    @torch.no_grad()
    def raw_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised encoder patch tokens as a (B, C, h, w) grid."""
        x = check_images(x, 3, 1)
        param = next(self.encoder.parameters())
        pixels = self.encoder_input(x.float()).to(device=param.device, dtype=param.dtype)
        tokens = encoder_tokens(self.encoder, pixels).float()
        b, n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, self.grid, self.grid)

    def _latent_scale(self) -> torch.Tensor:
        if self.latent_norm == "var_eps":  # official RAE: sqrt(var + eps)
            return (self.latents_var + STAT_EPS).sqrt()
        return self.latents_var.sqrt() + STAT_EPS  # diffusers AutoencoderRAE: std + eps

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents → normalised latents, in float32."""
        return (z.float() - self.latents_mean.float()) / self._latent_scale().float()

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self._latent_scale().float() + self.latents_mean.float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) → normalised latents (B, C, h, w)."""
        return self.normalize(self.raw_latents(x))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents → images in [-1, 1] (not clamped)."""
        tokens = self.denormalize(z).flatten(2).transpose(1, 2)
        param = self.decoder.embed.weight
        out = self.decoder(tokens.to(device=param.device, dtype=param.dtype)).float()
        img = out * self.pixel_std.float() + self.pixel_mean.float()  # back to [0, 1]
        return img * 2 - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) → images, nominally in [-1, 1] (not clamped: 2·x − 1 of the official
        ``RAE.decode`` / diffusers' ``AutoencoderRAE.decode``, which return [0, 1] images; pipelines clamp)."""
        z = check_latents(z, self.latent_dim)
        if tuple(z.shape[2:]) != (self.grid, self.grid):
            raise UserError(f"latents: expected a {self.grid}x{self.grid} grid, got {tuple(z.shape[2:])}")
        return self.decode_raw(z)

    @torch.no_grad()
    def compute_stats(self, images: torch.Tensor, batch_size: int = 256) -> None:
        """Per-position mean and variance of the raw latents over ``images`` (the normalisation statistics)."""
        zs = torch.cat([self.raw_latents(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])
        self.latents_mean.copy_(zs.mean(0))
        self.latents_var.copy_(zs.var(0, unbiased=False))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction from noise-augmented latents (training; pass ``generator``) or clean ones."""
        z = self.noisy_latents(x, generator) if generator is not None else self.encode(x)
        return self.decode_raw(z)

    def save_stats(self, path: str | Path) -> None:
        """Write the normalisation statistics as a ``{"mean", "var"}`` file (safetensors)."""
        save_safetensors({"mean": self.latents_mean, "var": self.latents_var}, path)

    def load_stats(self, path: str | Path) -> None:
        """Read ``{"mean", "var"}`` statistics (safetensors, or a ``torch.save``d dict as the official RAE
        ``stat_path`` files), per position (C, h, w), per channel (C,) / (C, 1, 1) or scalar."""
        stats = load_checkpoint(path)
        if not isinstance(stats, dict) or not ({"mean", "var"} & set(stats)):
            raise WeightsError(f"{path}: expected tensors 'mean' and/or 'var', found {sorted(stats)[:5] if isinstance(stats, dict) else type(stats).__name__}")
        shape = tuple(self.latents_mean.shape)
        # the official code treats a missing entry as mean 0 / variance 1
        mean = _broadcast_stat(stats["mean"], shape) if stats.get("mean") is not None else torch.zeros(shape)
        var = _broadcast_stat(stats["var"], shape) if stats.get("var") is not None else torch.ones(shape)
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()) or (var < 0).any():
            raise WeightsError(f"{path}: statistics must be finite with a non-negative variance")
        self.latents_mean.copy_(mean)
        self.latents_var.copy_(var)

    def noisy_latents(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise-augmented raw latents z + σ·ε, σ ~ U(0, τ) per sample (RAE §3.2), then normalised."""
        z = self.raw_latents(x)
        dev = generator.device
        sigma = self.noise_tau * torch.rand((z.shape[0], 1, 1, 1), generator=generator, device=dev)
        eps = torch.randn(z.shape, generator=generator, device=dev)  # float32, as z
        return self.normalize(z + (sigma * eps).to(z.device, z.dtype))


def _broadcast_stat(t: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """A latent statistic stored as a scalar, per channel (C,) / (C, 1, 1), or per position (C, h, w)."""
    t = t.detach().float()
    if t.numel() == 1:
        return t.reshape(1, 1, 1).expand(shape)
    if t.numel() == shape[0]:
        return t.reshape(shape[0], 1, 1).expand(shape)
    if t.numel() == shape[0] * shape[1] * shape[2]:
        return t.reshape(shape)
    raise WeightsError(f"latent statistics of shape {tuple(t.shape)} do not fit latents of shape {shape}")


def _official_decoder_config(src: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(src, dict):
        return dict(src)
    p = Path(src).expanduser()
    if p.is_dir():
        p = p / CONFIG_NAME
    if not p.is_file():
        raise WeightsError(f"{p}: no RAE decoder config.json")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{p}: not valid JSON ({e})") from None
    need = ("decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size")
    absent = [k for k in need if k not in cfg]
    if absent:
        raise WeightsError(f"{p}: not an RAE decoder config (missing {', '.join(absent)})")
    return cfg


def _official_decoder_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``GeneralDecoder`` state dict from ``model.pt`` (bare) or a stage-1 training checkpoint (``ema``/``model``,
    keys ``decoder.*`` of the whole RAE, optionally under DDP's ``module.`` / compile's ``_orig_mod.``)."""
    ckpt = load_checkpoint(path)
    sd = ckpt
    for key in ("ema", "model", "state_dict"):
        if isinstance(ckpt.get(key), dict):
            sd = ckpt[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: no decoder state dict found")
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            k = k[len(prefix):] if k.startswith(prefix) else k
        if k.startswith("encoder."):
            continue
        out[k[len("decoder."):] if k.startswith("decoder.") else k] = v
    return out


def _official_decoder_to_mgen(sd: dict[str, torch.Tensor], what: str = "decoder weights") -> dict[str, torch.Tensor]:
    """Official RAE ``GeneralDecoder`` names (transformers' ViT-MAE layers) → :class:`RAEDecoder` names."""
    out: dict[str, torch.Tensor] = {}
    simple = {"decoder_embed": "embed", "decoder_norm": "norm", "decoder_pred": "pred"}
    layer_names = {"attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
                   "layernorm_before": "norm1", "layernorm_after": "norm2"}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        head = k.split(".")[0]
        if k == "trainable_cls_token":
            out["cls_token"] = v
        elif k == "decoder_pos_embed":
            continue  # fixed sin-cos table (checked by the caller)
        elif head in simple and k.count(".") == 1:
            out[simple[head] + k[len(head):]] = v
        elif head == "decoder_layers":
            _, i, rest = k.split(".", 2)
            module, param = rest.rsplit(".", 1)
            if module.startswith("attention.attention.") and module.split(".")[-1] in ("query", "key", "value"):
                qkv.setdefault((int(i), param), {})[module.split(".")[-1]] = v
            elif module in layer_names:
                out[f"blocks.{i}.{layer_names[module]}.{param}"] = v
            else:
                raise WeightsError(f"{what}: unknown decoder parameter {k}")
        else:
            raise WeightsError(f"{what}: unknown decoder parameter {k} (expected the official GeneralDecoder layout)")
    for (i, param), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsError(f"{what}: layer {i} lacks some of query/key/value {param}")
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def convert_official_rae(src: str | os.PathLike, out: str | os.PathLike, encoder: str | None = None,
                         decoder_config: str | None = None, stats: str | None = None, encoder_input_size: int = 224,
                         decoder_patch_size: int = 16, trust_remote_code: bool = False, force: bool = False) -> None:
    """`mgen convert rae MODEL.pt OUT --opt encoder=DIR --opt decoder_config=DIR [--opt stats=stat.pt]`.

    The output folder (encoder weights included) is built in a temporary sibling and renamed into place
    (:func:`mgen.fileio.atomic_dir`). Code named by the encoder folder's ``auto_map`` runs only with
    ``trust_remote_code=True`` (``--opt trust_remote_code=true``)."""
    if encoder is None or decoder_config is None:
        raise UserError("convert rae: needs --opt encoder=ENCODER_FOLDER and --opt decoder_config=DECODER_CONFIG_DIR")
    if not isinstance(trust_remote_code, bool):
        raise UserError(f"convert rae: trust_remote_code must be true or false, got {trust_remote_code!r}")
    with atomic_dir(out, force=force) as tmp:  # refused before anything is read if out is taken
        tok = RAETokenizer.from_official(encoder, decoder_config, Path(src), stats, int(encoder_input_size),
                                         int(decoder_patch_size), trust_remote_code=trust_remote_code)
        tok.save_pretrained(tmp)


def _diffusers_decoder_to_mgen(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``RAEDecoder`` names (ViT-MAE layers) → :class:`RAEDecoder` names (timm-style ViTBlocks)."""
    out: dict[str, torch.Tensor] = {}
    simple = {"decoder_embed": "embed", "decoder_norm": "norm", "decoder_pred": "pred"}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k == "trainable_cls_token":
            out["cls_token"] = v
        elif k.split(".")[0] in simple:
            out[simple[k.split(".")[0]] + k[k.index("."):]] = v
        elif k.startswith("decoder_layers."):
            _, i, rest = k.split(".", 2)
            layers.setdefault(int(i), {})[rest] = v
        elif k == "decoder_pos_embed":
            continue
        else:
            raise WeightsError(f"AutoencoderRAE decoder: unknown parameter {k}")
    names = {"layernorm_before": "norm1", "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1",
             "output.dense": "mlp.fc2", "attention.to_out.0": "attn.proj"}
    for i, p in layers.items():
        for param in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([p[f"attention.to_{n}.{param}"] for n in "qkv"])
            for src, dst in names.items():
                out[f"blocks.{i}.{dst}.{param}"] = p[f"{src}.{param}"]
    return out


# -- training ---------------------------------------------------------------------------------------

class RAETrainTask:
    """Decoder training on noise-augmented latents: L1(x, D(z̃)) (+ optional LPIPS), encoder frozen."""

    def __init__(self, model: RAETokenizer, perceptual: nn.Module | None = None, perceptual_weight: float = 0.0,
                 preview: torch.Tensor | None = None, disc_weight: float = 0.0, disc_start: int = 0) -> None:
        self.model, self.perceptual, self.perceptual_weight = model, perceptual, float(perceptual_weight)
        self.preview = preview
        self.disc_weight, self.disc_start = float(disc_weight), int(disc_start)

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        x = batch[0]
        rec = model(x, generator)
        loss = (rec.float() - x.float()).abs().mean()
        if self.perceptual is not None and self.perceptual_weight > 0:
            loss = loss + self.perceptual_weight * self.perceptual.to(x.device)(rec.float(), x.float()).mean()
        return loss + adversarial_loss(model, x, rec, self.disc_weight, self.disc_start)

    @torch.no_grad()
    def sample_grid(self, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        x = self.preview.to(next(model.parameters()).device)
        rec = model.decode(model.encode(x))
        return torch.stack([x, rec], dim=1).reshape(-1, *x.shape[1:]).float().cpu()


class MAEPretrainTask:
    """Masked-autoencoder pretraining of the digits encoder (He et al., "Masked Autoencoders Are Scalable
    Vision Learners", CVPR 2022): transformers' ``ViTMAEForPreTraining`` loss (MSE on masked patches), with
    the masking noise drawn from the step's generator."""

    def __init__(self, model: nn.Module, image_mean: Sequence[float], image_std: Sequence[float]) -> None:
        self.model = model
        self.mean = torch.tensor(list(image_mean)).view(1, -1, 1, 1)
        self.std = torch.tensor(list(image_std)).view(1, -1, 1, 1)

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        x = (batch[0] + 1) / 2
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        n = (x.shape[-1] // _patch_size(model.config)) ** 2
        noise = torch.rand((x.shape[0], n), generator=generator, device=generator.device).to(x.device)
        return model(pixel_values=x, noise=noise).loss


def build_rae_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of an RAE config for the one trainer (:mod:`mgen.train.builder`), on the offline digits:
    stage 1 pretrains a ViT-MAE encoder (``factory.pretrain``, resumable, under OUT/encoder) unless ``train.encoder``
    names a folder; stage 2, the returned job, trains the decoder."""
    own, rest = _train_settings(entry)
    cfg = factory.config(rest)
    out = Path(cfg.out_dir)
    arch = dict(entry.arch)
    size = int(own.get("image_size", 16))
    x_train, _ = factory.data.digits("train", size=size)
    x_test, _ = factory.data.digits("test", size=size)
    mean, std = arch.get("image_mean", [0.5, 0.5, 0.5]), arch.get("image_std", [0.5, 0.5, 0.5])
    if own.get("encoder"):
        encoder = load_encoder(own["encoder"])
    else:  # stage 1: pretrain a ViT-MAE on the training split (resumable, under OUT/encoder)
        encoder = _pretrain_mae(factory, arch, own, cfg, x_train, out / "encoder", mean, std)
    torch.manual_seed(cfg.seed)
    model = RAETokenizer.with_encoder(encoder, dict(arch.get("decoder", {})),
                                      encoder_input_size=arch.get("encoder_input_size"), image_mean=list(mean),
                                      image_std=list(std), noise_tau=float(own.get("noise_tau", RAE_NOISE_TAU)))
    model.compute_stats(x_train[: int(own.get("stats_samples", x_train.shape[0]))])
    perceptual = load_perceptual(own)
    disc_weight, disc_start = attach_discriminator(model, own)
    task = RAETrainTask(model, perceptual, float(own.get("perceptual_weight", 0.0)), preview=x_test[:16],
                        disc_weight=disc_weight, disc_start=disc_start)
    return task, (x_train,), cfg


@torch.no_grad()
def _init_mae_positions(mae: nn.Module) -> None:
    """Set MAE's fixed 2-D sin-cos position tables (He et al. 2022; MAE's [w | h] channel layout).

    transformers 5 leaves them at zero when a ``ViTMAEForPreTraining`` is built from a config (its
    ``_init_weights`` skips the encoder table and zeroes the decoder's), which makes the model blind to
    positions; we write them explicitly.
    """
    grid = mae.config.image_size // mae.config.patch_size
    emb = mae.vit.embeddings.position_embeddings
    emb.copy_(sincos_2d(emb.shape[-1], grid, extra_tokens=1)[None].to(emb.dtype))
    dec = mae.decoder.decoder_pos_embed
    dec.copy_(sincos_2d(dec.shape[-1], grid, extra_tokens=1)[None].to(dec.dtype))


def _pretrain_mae(factory: Any, arch: dict[str, Any], own: dict[str, Any], cfg: Any, x_train: torch.Tensor, out: Path,
                  mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    enc = dict(arch.get("encoder", {}))
    enc.setdefault("mask_ratio", float(own.get("mae_mask_ratio", 0.75)))
    torch.manual_seed(cfg.seed)
    mae = ViTMAEForPreTraining(ViTMAEConfig(**enc))
    _init_mae_positions(mae)
    mae_cfg = factory.config(dict(max_steps=int(own.get("mae_steps", 2000)), batch_size=cfg.batch_size,
                                  lr=float(own.get("mae_lr", 1e-3)), betas=(0.9, 0.95), weight_decay=0.05, warmup_steps=100,
                                  lr_schedule="cosine", min_lr=1e-5, checkpoint_every=cfg.checkpoint_every,
                                  log_every=cfg.log_every, seed=cfg.seed, progress=cfg.progress,
                                  mixed_precision=cfg.mixed_precision), out_dir=str(out), command_line=False)
    encoder = factory.pretrain(MAEPretrainTask(mae, mean, std), (x_train,), mae_cfg).vit
    encoder.config.mask_ratio = 0.0
    return encoder
