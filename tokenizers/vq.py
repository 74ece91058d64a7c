"""Vector-quantised autoencoder (VQGAN, taming-transformers / MaskGIT style) as an mgen tokenizer.

Papers: van den Oord et al., "Neural Discrete Representation Learning" (VQ-VAE, 2017): nearest-
neighbour quantisation z_q = e_k, k = argmin_j ‖z − e_j‖ (eq. 1–2), the straight-through gradient
estimator, and the loss ‖sg[z] − e‖² + β‖z − sg[e]‖² (eq. 3; β = 0.25), with the EMA codebook update of
its appendix A.1 (cluster sizes N_k and sums m_k decayed by γ, e_k = m_k / N_k). Esser et al., "Taming
Transformers for High-Resolution Image Synthesis" (VQGAN, CVPR 2021) for the conv encoder/decoder
(the LDM network) used by MaskGIT (Chang et al., CVPR 2022) and valeoai/Maskgit-pytorch (v1: the
ImageNet f=16 VQGAN, 1024 codes of 256 dimensions). Yu et al., "Vector-quantized Image Modeling with
Improved VQGAN" (ViT-VQGAN, ICLR 2022, §3.2) for factorised (low-dimensional projection) and
l2-normalised codes. Dead codes are restarted from encoder outputs of the current batch (Dhariwal et
al., "Jukebox", 2020, §B.1 random restarts).

The encoder/decoder are diffusers' ``VQModel`` modules; the quantiser is :class:`VectorQuantizer`
below (its nearest-neighbour search uses ``torch.cdist`` like diffusers', so the same weights pick the
same indices). Key names stay diffusers' (``quantize.embedding.weight``), so diffusers folders load
directly and taming/MaskGIT checkpoints load after the LDM key mapping of :mod:`mgen.tokenizers.ldm_keys`.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers import VQModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mgen.errors import UserError, WeightsError
from mgen.fileio import atomic_dir
from mgen.hub import iter_state_dicts, load_checkpoint, save_safetensors
from mgen.tokenizers.base import (CONFIG_NAME, WEIGHTS_NAME, ArchAliasesMixin, Float32Islands, build_from_arch, check_state_dict,
                                  config_arch, config_kwargs, finish, folder_of, is_own_folder, load_saved_folder,
                                  metadata_config, plain, read_json, registry_entry, resolve_name, split_loading_kwargs)
from mgen.tokenizers.checks import check_images
from mgen.tokenizers.diffusers_attention import use_mgen_attention
from mgen.tokenizers.ldm_keys import LDMArch, infer_ldm_arch, ldm_to_diffusers
from mgen.tokenizers.lightning import load_lightning_checkpoint
from mgen.tokenizers.training import _train_settings, adversarial_loss, attach_discriminator, load_perceptual

QUANTIZER_KEY = "mgen_quantizer"  # extra entry in config.json with the options diffusers' quantiser lacks


class _Codebook(Float32Islands, nn.Embedding):
    """``nn.Embedding`` whose weight stays float32 under ``.to(torch.bfloat16)`` (the nearest-code search)."""

    _fp32_tensors = ("weight",)


class VectorQuantizer(Float32Islands, nn.Module):
    """Nearest-neighbour codebook with straight-through gradients.

    Options: ``l2_norm`` (compare and return l2-normalised codes and inputs, ViT-VQGAN §3.2), ``ema``
    (codebook follows exponential moving averages of its assigned inputs instead of gradients),
    ``dead_threshold`` (codes whose EMA usage per step falls below it are restarted from random
    encoder outputs of the batch), ``beta`` (commitment weight of eq. 3).
    """

    _fp32_tensors = ("usage", "cluster_size", "embed_sum")

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, l2_norm: bool = False, ema: bool = False,
                 ema_decay: float = 0.99, dead_threshold: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise UserError(f"a codebook needs at least 2 codes of dimension >= 1, got {num_codes}x{dim}")
        self.num_codes, self.dim, self.beta = int(num_codes), int(dim), float(beta)
        self.l2_norm, self.ema, self.ema_decay = bool(l2_norm), bool(ema), float(ema_decay)
        self.dead_threshold, self.eps = float(dead_threshold), float(eps)
        self.embedding = _Codebook(self.num_codes, self.dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / self.num_codes, 1.0 / self.num_codes)
        if self.ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("cluster_size", torch.ones(self.num_codes))
            self.register_buffer("embed_sum", self.embedding.weight.detach().clone())
        self.register_buffer("usage", torch.ones(self.num_codes))

    def options(self) -> dict[str, Any]:
        return {"beta": self.beta, "l2_norm": self.l2_norm, "ema": self.ema, "ema_decay": self.ema_decay,
                "dead_threshold": self.dead_threshold}

    def codes(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """argmin_k ‖flat − e_k‖ over the codebook (eq. 2), as diffusers' quantiser computes it (in float32)."""
        codes = self.codes().float()
        flat = flat.float()
        if self.l2_norm:
            flat = F.normalize(flat, dim=-1)
        return torch.argmin(torch.cdist(flat, codes), dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) → code vectors (B, dim, h, w)."""
        return F.embedding(indices, self.codes()).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, dim, h, w) → (straight-through z_q, VQ loss of eq. 3, indices (B, h, w)).

        In training mode the EMA codebook and the dead-code restarts are updated from this batch (the
        restart picks come from ``generator``).
        """
        b, c, h, w = z.shape
        if c != self.dim:
            raise UserError(f"quantiser expects {self.dim} channels, got {c}")
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, c)
        if self.l2_norm:
            flat = F.normalize(flat, dim=-1)
        idx = self.nearest(flat)
        q = F.embedding(idx, self.codes())
        commit = F.mse_loss(flat, q.detach())
        loss = self.beta * commit if self.ema else F.mse_loss(q, flat.detach()) + self.beta * commit
        if self.training:
            self._update(flat.detach(), idx, generator)
        q = flat + (q - flat).detach()  # straight-through estimator
        return q.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous(), loss, idx.reshape(b, h, w)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor, generator: torch.Generator | None) -> None:
        counts = torch.bincount(idx, minlength=self.num_codes).to(self.usage.dtype)
        self.usage.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
        if self.ema:  # VQ-VAE appendix A.1
            onehot = F.one_hot(idx, self.num_codes).to(flat.dtype)
            self.cluster_size.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
            self.embed_sum.mul_(self.ema_decay).add_(onehot.t() @ flat, alpha=1 - self.ema_decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace smoothing
            self.embedding.weight.copy_(self.embed_sum / smoothed[:, None])
        if self.dead_threshold > 0:
            dead = torch.nonzero(self.usage < self.dead_threshold).flatten()
            if dead.numel():
                dev = generator.device if generator is not None else flat.device
                pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator, device=dev).to(flat.device)
                fresh = flat[pick]
                self.embedding.weight[dead] = fresh
                self.usage[dead] = 1.0
                if self.ema:
                    self.cluster_size[dead] = 1.0
                    self.embed_sum[dead] = fresh


#: diffusers ``VQModel`` config fields: VQTokenizer's config uses the same names (plus the quantiser options).
VQMODEL_FIELDS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                  "layers_per_block", "act_fn", "latent_channels", "sample_size", "num_vq_embeddings", "norm_num_groups",
                  "vq_embed_dim", "scaling_factor", "norm_type", "mid_block_add_attention", "lookup_from_codebook",
                  "force_upcast")
QUANTIZER_FIELDS = ("beta", "l2_norm", "ema", "ema_decay", "dead_threshold")
#: the LDM / taming spelling of the architecture (configs/vq-digits.yaml, maskgit-vqgan.yaml): accepted by
#: ``__init__``, converted by :func:`_arch_from_mapping`, not stored.
LDM_ALIASES = ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "codebook_size", "resolution",
               "attn_resolutions", "decoder_attn_resolutions", "out_ch", "stride")
_TRAINING_BUFFERS = ("quantize.usage", "quantize.cluster_size", "quantize.embed_sum")


def looks_like(state_dict: Mapping[str, Any]) -> bool:
    """Whether a bare state dict is a taming-transformers / valeoai MaskGIT VQGAN (``last.ckpt``): LDM-layout
    names (``encoder.down.*``), a ``quant_conv`` and a ``quantize.embedding`` codebook (the MaskGIT (JAX) VQGAN
    has no ``quant_conv``: :func:`mgen.tokenizers.maskgit_jax_vq.looks_like`). Pure key inspection."""
    sd = state_dict
    return ("quantize.embedding.weight" in sd and "quant_conv.weight" in sd and "encoder.conv_in.weight" in sd
            and any(str(k).startswith("encoder.down.") for k in sd))


class VQTokenizer(ArchAliasesMixin, ModelMixin, ConfigMixin):
    """Discrete tokenizer: images in [-1, 1] ↔ code indices (B, h, w) of a VQGAN.

    The config fields are diffusers' ``VQModel`` fields plus the quantiser options (``beta``, ``l2_norm``,
    ``ema``, ``ema_decay``, ``dead_threshold``); the modules are ``VQModel``'s (``encoder``, ``quant_conv``,
    ``quantize``, ``post_quant_conv``, ``decoder``, same parameter names). ``__init__`` also takes the LDM /
    taming spelling of the architecture (``ch``, ``ch_mult``, ``codebook_size``, ...), converted to the stored
    diffusers fields. Under ``.to(torch.bfloat16)`` the convolutions run in bf16 while the codebook and the
    nearest-code distances stay float32; ``decode`` returns float32.
    """

    config_name = CONFIG_NAME
    ignore_for_config = list(LDM_ALIASES)
    _keep_in_fp32_modules = ["quantize"]

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types: Sequence[str] | None = None,
                 up_block_types: Sequence[str] | None = None, block_out_channels: Sequence[int] = (64,),
                 layers_per_block: int = 1, act_fn: str = "silu", latent_channels: int = 3, sample_size: int = 32,
                 num_vq_embeddings: int = 256, norm_num_groups: int = 32, vq_embed_dim: int | None = None,
                 scaling_factor: float = 1.0, norm_type: str = "group", mid_block_add_attention: bool = True,
                 lookup_from_codebook: bool = False, force_upcast: bool = False, beta: float = 0.25,
                 l2_norm: bool = False, ema: bool = False, ema_decay: float = 0.99, dead_threshold: float = 0.0, *,
                 ch: int | None = None, ch_mult: Sequence[int] | None = None, num_res_blocks: int | None = None,
                 z_channels: int | None = None, embed_dim: int | None = None, codebook_size: int | None = None,
                 resolution: int | None = None, attn_resolutions: Sequence[int] | None = None,
                 decoder_attn_resolutions: Sequence[int] | None = None, out_ch: int | None = None,
                 stride: int | None = None) -> None:
        super().__init__()
        given = dict(zip(LDM_ALIASES, (ch, ch_mult, num_res_blocks, z_channels, embed_dim, codebook_size, resolution,
                                       attn_resolutions, decoder_attn_resolutions, out_ch, stride)))
        given = {k: v for k, v in given.items() if v is not None}
        unset = list(self.config.get("_use_default_values", []))
        explicit = set(VQMODEL_FIELDS) - set(unset)
        if given:
            clash = explicit - {"in_channels", "norm_num_groups"}
            if clash:
                raise UserError(f"VQ arch: use either the LDM names {sorted(given)} or the diffusers names "
                                f"{sorted(clash)}, not both")
            ldm = {**given, "in_channels": in_channels,
                   **{k: self.config[k] for k in QUANTIZER_FIELDS if k not in unset}}
            if "norm_num_groups" in explicit:
                ldm["norm_num_groups"] = norm_num_groups
            cfg = _arch_from_mapping(ldm)
            qopts = cfg.pop(QUANTIZER_KEY)
            cfg.update(qopts)
            self.register_to_config(**cfg, _use_default_values=[k for k in unset if k not in cfg])
        c = self.config
        if c.norm_type != "group":
            raise UserError("only norm_type 'group' VQModels are supported (not MoVQ's spatial norm)")
        n = len(c.block_out_channels)
        fields = {k: plain(c[k]) for k in VQMODEL_FIELDS}
        if not fields["down_block_types"] or not fields["up_block_types"]:
            fields["down_block_types"] = fields["down_block_types"] or ["DownEncoderBlock2D"] * n
            fields["up_block_types"] = fields["up_block_types"] or ["UpDecoderBlock2D"] * n
            self.register_to_config(down_block_types=fields["down_block_types"], up_block_types=fields["up_block_types"])
        try:
            vae = VQModel(**fields)
        except (TypeError, ValueError, AttributeError) as e:
            raise UserError(f"bad VQModel config: {e}") from None
        k, d = vae.quantize.embedding.weight.shape
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv
        self.quantize = VectorQuantizer(k, d, beta=c.beta, l2_norm=c.l2_norm, ema=c.ema, ema_decay=c.ema_decay,
                                        dead_threshold=c.dead_threshold)
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder
        use_mgen_attention(self)

    @property
    def quantizer(self) -> VectorQuantizer:
        return self.quantize

    @property
    def scaling_factor(self) -> float:
        return 1.0  # discrete: generators see indices

    @property
    def codebook_size(self) -> int:
        return self.quantizer.num_codes

    @property
    def stride(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def in_channels(self) -> int:
        return int(self.config.in_channels)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> "VQTokenizer":
        """Random weights from a registry ``arch`` mapping (LDM names + codebook options, or diffusers names)."""
        return build_from_arch(cls, arch, "VQ")

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, config: Any = None, **kwargs: Any) -> "VQTokenizer":
        """Load a folder written by :meth:`save_pretrained` (diffusers' loader), a diffusers ``VQModel`` folder, the
        valeoai/Maskgit-pytorch (taming) VQGAN ``last.ckpt``, an mgen single ``.safetensors`` file, or a registered
        name (``maskgit-vqgan``, ``vq-digits``). ``config`` (a registry name, YAML or arch mapping) is accepted for
        the resolver's sake; official files carry their architecture in their shapes. ``torch_dtype`` honoured."""
        dtype, rest = split_loading_kwargs(kwargs, cls.__name__)
        config_arch(config, cls, "a VQ tokenizer")
        p = Path(os.fspath(path_or_name)).expanduser()
        if not p.exists():
            entry = registry_entry(str(path_or_name), cls, "a VQ tokenizer")
            if entry.arch.get("network") not in (None, "taming"):
                raise UserError(f"{entry.name} is a VQ tokenizer of another network ({entry.arch['network']}), "
                                "not a taming VQGAN")
            _, p = resolve_name(str(path_or_name), cls, "a VQ tokenizer")
        folder = folder_of(p)
        if folder is not None and is_own_folder(folder, cls):
            tok = load_saved_folder(cls, folder, rest)
        elif folder is not None:
            tok = cls._from_folder(folder)
        else:
            tok = cls._from_file(p)
        return finish(tok, dtype)

    @classmethod
    def _from_folder(cls, folder: Path) -> "VQTokenizer":
        """A diffusers ``VQModel`` folder (or an older mgen folder: the same layout + ``mgen_quantizer`` options)."""
        cfg_path = folder / CONFIG_NAME
        if not cfg_path.is_file():
            raise WeightsError(f"{folder}: no {CONFIG_NAME} (expected a diffusers VQModel or mgen tokenizer folder)")
        config = read_json(cfg_path)
        if config.get("_class_name", "VQModel") != "VQModel":
            raise WeightsError(f"{folder}: holds a {config.get('_class_name')}, not a VQModel")
        found = next((w for w in (folder / WEIGHTS_NAME, folder / "diffusion_pytorch_model.bin") if w.is_file()), None)
        if found is None:
            raise WeightsError(f"{folder}: no weights file ({WEIGHTS_NAME})")
        return cls._build(_stored_config(config), load_checkpoint(found), str(found))

    @classmethod
    def _from_file(cls, path: Path) -> "VQTokenizer":
        ckpt = load_lightning_checkpoint(path)
        config = metadata_config(path)
        sd = iter_state_dicts(ckpt, ("state_dict", "model")) or ckpt
        if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsError(f"{path}: no state dict found (expected {{'state_dict': ...}} or a flat dict of tensors)")
        if config is not None:
            if config.get("_class_name", "VQModel") not in ("VQModel", cls.__name__):
                raise WeightsError(f"{path}: holds a {config.get('_class_name')}, not a VQ tokenizer")
            return cls._build(_stored_config(config), sd, str(path))
        if "quantize.embedding.weight" in sd and any(k.startswith("encoder.down.") for k in sd):
            return cls._from_taming_state_dict(sd, str(path))
        raise WeightsError(f"{path}: neither a taming/MaskGIT VQGAN checkpoint nor an mgen tokenizer file; "
                           "for diffusers weights pass the folder with config.json")

    @classmethod
    def _from_taming_state_dict(cls, sd: dict[str, torch.Tensor], what: str) -> "VQTokenizer":
        arch = infer_ldm_arch(sd, what)
        k, d = sd["quantize.embedding.weight"].shape
        config = {**plain(arch.diffusers_config()), "latent_channels": arch.z_channels, "num_vq_embeddings": int(k),
                  "vq_embed_dim": int(d), "sample_size": 256, "scaling_factor": 1.0}
        mapped = ldm_to_diffusers({n: v for n, v in sd.items() if not n.startswith("quantize.")}, len(arch.ch_mult),
                                  what=what)
        mapped["quantize.embedding.weight"] = sd["quantize.embedding.weight"]
        return cls._build(config, mapped, what)

    @classmethod
    def _build(cls, config: Mapping[str, Any], sd: Mapping[str, torch.Tensor], what: str) -> "VQTokenizer":
        try:
            tok = cls(**config_kwargs(cls, config))
        except (TypeError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise WeightsError(f"{what}: bad VQModel config ({e})") from None
        own = tok.state_dict()
        check_state_dict(own, sd, what, "VQModel", optional=_TRAINING_BUFFERS)  # training state: optional in files
        tok.load_state_dict({**{k: own[k] for k in _TRAINING_BUFFERS if k in own},
                             **{k: v.float() for k, v in sd.items()}})
        return tok.eval()

    def _sync_config(self) -> None:
        """The quantiser options as they are now (they are plain attributes of the quantiser)."""
        q = self.quantizer
        self.register_to_config(beta=q.beta, l2_norm=q.l2_norm, ema=q.ema, ema_decay=q.ema_decay,
                                dead_threshold=q.dead_threshold)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``), after
        writing the quantiser's current options into the config."""
        self._sync_config()
        super().save_pretrained(save_directory, **kwargs)

    def config_dict(self) -> dict[str, Any]:
        self._sync_config()
        cfg = {k: plain(v) for k, v in self.config.items() if not k.startswith("_")}
        cfg["_class_name"] = type(self).__name__
        return cfg

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k not in _TRAINING_BUFFERS}

    def save_file(self, path: str | os.PathLike) -> None:
        """One self-describing ``.safetensors`` file (config in its metadata), as shipped in ``mgen/weights``."""
        save_safetensors(self.inference_state_dict(), path, metadata={"config": json.dumps(self.config_dict()), "format": "pt"})

    # -- Tokenizer protocol ---------------------------------------------------------------------
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous pre-quantisation latents (B, dim, h, w), float32."""
        x = check_images(x, self.in_channels, self.stride)
        param = self.encoder.conv_in.weight
        return self.quant_conv(self.encoder(x.to(device=param.device, dtype=param.dtype))).float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) → code indices, LongTensor (B, H/stride, W/stride)."""
        z = self.encode_latents(x)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return self.quantizer.nearest(flat).reshape(z.shape[0], z.shape[2], z.shape[3])

    def check_indices(self, indices: Any) -> torch.Tensor:
        if not torch.is_tensor(indices) or indices.dim() != 3 or indices.is_floating_point():
            raise UserError(f"code indices: expected an integer tensor (B, h, w), got {getattr(indices, 'shape', type(indices).__name__)}"
                            f"{'' if not torch.is_tensor(indices) else ' of ' + str(indices.dtype)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise UserError(f"code indices must be in [0, {self.codebook_size}), got [{int(indices.min())}, {int(indices.max())}]")
        return indices.long()

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Quantised code vectors (B, dim, h, w) → raw decoder output (not clamped), float32."""
        param = self.post_quant_conv.weight
        return self.decoder(self.post_quant_conv(codes.to(device=param.device, dtype=param.dtype))).float()

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) → images, nominally in [-1, 1].

        Not clamped: the output equals taming's ``VQModel.decode_code`` and diffusers' ``VQModel.decode``
        on the same weights; the pipelines and image writers clamp."""
        idx = self.check_indices(indices).to(self.quantizer.embedding.weight.device)
        return self.decode_codes(self.quantizer.lookup(idx))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, VQ loss, indices) with straight-through gradients."""
        q, loss, idx = self.quantizer(self.encode_latents(x), generator)
        return self.decode_codes(q), loss, idx


def _stored_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``VQModel`` / older mgen config as VQTokenizer fields (diffusers' defaults where unset, the
    ``mgen_quantizer`` options of older mgen files as the quantiser fields)."""
    cfg = {k: v for k, v in config.items() if not str(k).startswith("_")}
    qopts = dict(cfg.pop(QUANTIZER_KEY, None) or {})
    if config.get("_class_name") == VQTokenizer.__name__:
        return {**cfg, **qopts}
    defaults = {n: p.default for n, p in inspect.signature(VQModel.__init__).parameters.items()
                if n != "self" and p.default is not inspect.Parameter.empty}
    used = set(config.get("_use_default_values", []))
    return plain({**defaults, **{k: v for k, v in cfg.items() if k not in used}, **qopts})


def _arch_from_mapping(arch: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``VQModel`` config (+ quantiser options) from a YAML ``arch`` mapping with LDM names."""
    arch = dict(arch)
    allowed = {"ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "codebook_size", "resolution",
               "attn_resolutions", "decoder_attn_resolutions", "in_channels", "out_ch", "norm_num_groups", "beta",
               "l2_norm", "ema", "ema_decay", "dead_threshold", "stride"}
    bad = set(arch) - allowed
    if bad:
        raise UserError(f"VQ arch: unknown keys {sorted(bad)}; allowed {sorted(allowed)}")
    try:
        ch, ch_mult = int(arch["ch"]), tuple(int(m) for m in arch["ch_mult"])
        z, k = int(arch["z_channels"]), int(arch["codebook_size"])
    except (KeyError, TypeError) as e:
        raise UserError(f"VQ arch: missing or bad {e}") from None
    n, res = len(ch_mult), int(arch.get("resolution", 256))
    enc_res = set(arch.get("attn_resolutions", ()))
    dec_res = set(arch.get("decoder_attn_resolutions", enc_res))
    ldm = LDMArch(int(arch.get("in_channels", 3)), int(arch.get("out_ch", 3)), ch, ch_mult, int(arch.get("num_res_blocks", 2)),
                  z, int(arch.get("embed_dim", z)), tuple(i for i in range(n) if res // 2**i in enc_res),
                  tuple(i for i in range(n) if res // 2**i in dec_res), double_z=False)
    if "stride" in arch and int(arch["stride"]) != 2 ** (n - 1):
        raise UserError(f"VQ arch: stride {arch['stride']} does not match ch_mult (stride {2 ** (n - 1)})")
    cfg = ldm.diffusers_config()
    cfg["norm_num_groups"] = int(arch.get("norm_num_groups", 32))
    q = {key: arch[key] for key in QUANTIZER_FIELDS if key in arch}
    return {**plain(cfg), "latent_channels": z, "num_vq_embeddings": k, "vq_embed_dim": ldm.embed_dim,
            "sample_size": res, "scaling_factor": 1.0, QUANTIZER_KEY: q}


def convert_maskgit_vqgan(src: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> None:
    """`mgen convert maskgit-vqgan SRC OUT`: the taming/MaskGIT VQGAN ``last.ckpt`` → a :class:`VQTokenizer` folder,
    built in a temporary sibling and renamed into place (:func:`mgen.fileio.atomic_dir`)."""
    with atomic_dir(out, force=force) as tmp:  # refused before anything is read if out is taken
        tok = VQTokenizer.from_pretrained(Path(src))
        tok.save_pretrained(tmp)


# -- training ---------------------------------------------------------------------------------------

class VQTrainTask:
    """VQ-VAE training: L1 reconstruction (+ optional LPIPS, + optional PatchGAN hinge terms) + the quantiser
    loss of eq. 3 (commitment β)."""

    def __init__(self, model: VQTokenizer, recon: str = "l1", perceptual: nn.Module | None = None,
                 perceptual_weight: float = 0.0, preview: torch.Tensor | None = None, disc_weight: float = 0.0,
                 disc_start: int = 0) -> None:
        if recon not in ("l1", "mse"):
            raise UserError(f"recon must be 'l1' or 'mse', got {recon!r}")
        self.model, self.recon = model, recon
        self.disc_weight, self.disc_start = float(disc_weight), int(disc_start)
        self.perceptual, self.perceptual_weight = perceptual, float(perceptual_weight)
        self.preview = preview

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        x = batch[0]
        rec, vq_loss, _ = model(x, generator)
        err = rec.float() - x.float()
        loss = (err.abs().mean() if self.recon == "l1" else err.pow(2).mean()) + vq_loss.float()
        if self.perceptual is not None and self.perceptual_weight > 0:
            loss = loss + self.perceptual_weight * self.perceptual.to(x.device)(rec.float(), x.float()).mean()
        return loss + adversarial_loss(model, x, rec, self.disc_weight, self.disc_start)

    @torch.no_grad()
    def sample_grid(self, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        x = self.preview.to(next(model.parameters()).device)
        rec = model.decode(model.encode(x))
        return torch.stack([x, rec], dim=1).reshape(-1, *x.shape[1:]).float().cpu()


def build_vq_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of a VQ tokenizer config for the one trainer (:mod:`mgen.train.builder`), on the
    offline digits."""
    own, rest = _train_settings(entry)
    cfg = factory.config(rest)
    torch.manual_seed(cfg.seed)
    model = VQTokenizer.from_arch(entry.arch)
    size = int(own.get("image_size", 16))
    x_train, _ = factory.data.digits("train", size=size, channels=model.in_channels)
    x_test, _ = factory.data.digits("test", size=size, channels=model.in_channels)
    perceptual = load_perceptual(own)
    disc_weight, disc_start = attach_discriminator(model, own)
    task = VQTrainTask(model, recon=own.get("recon", "l1"), perceptual=perceptual,
                       perceptual_weight=float(own.get("perceptual_weight", 0.0)), preview=x_test[:16],
                       disc_weight=disc_weight, disc_start=disc_start)
    return task, (x_train,), cfg


