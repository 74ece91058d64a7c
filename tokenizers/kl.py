"""KL-regularised convolutional autoencoder (the LDM / Stable Diffusion VAE) as an mgen tokenizer.

Paper: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022),
§3 and appendix G: an encoder E maps x to the moments of a diagonal Gaussian posterior
q(z|x) = N(μ(x), diag σ²(x)) (the "KL-reg." autoencoder), a decoder D maps z back to pixels, and the
training loss is the reconstruction loss plus a small weight times KL(q(z|x) ‖ N(0, I)) (eq. 25 of the
appendix; the adversarial term is optional, :mod:`mgen.tokenizers.patchgan`). MAR (Li et al., "Autoregressive Image Generation without
Vector Quantization", 2024) uses the f=16, 16-channel version ``kl16`` and scales latents by 0.2325
(LTH14/mar ``engine_mar.py``: ``posterior.sample().mul_(0.2325)``).

The network is diffusers' ``AutoencoderKL`` (the same architecture as LDM's ``Encoder``/``Decoder``);
what this module adds is loading the official LDM layout (:mod:`mgen.tokenizers.ldm_keys`), the
Tokenizer protocol (unscaled posterior mean from ``encode``, seeded posterior samples), input checks,
self-describing safetensors files, and the training task for ``mgen train --config configs/kl-*.yaml``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mgen.errors import UserError, WeightsError
from mgen.fileio import atomic_dir
from mgen.hub import iter_state_dicts, load_checkpoint, save_safetensors
from mgen.tokenizers.base import (CONFIG_NAME, WEIGHTS_NAME, ArchAliasesMixin, build_from_arch, check_state_dict, config_arch,
                                  config_kwargs, finish, folder_of, is_own_folder, load_saved_folder, metadata_config,
                                  plain, read_json, resolve_name, split_loading_kwargs)
from mgen.tokenizers.checks import check_images, check_latents
from mgen.tokenizers.diffusers_attention import use_mgen_attention
from mgen.tokenizers.ldm_keys import LDMArch, infer_ldm_arch, ldm_to_diffusers
from mgen.tokenizers.lightning import load_lightning_checkpoint
from mgen.tokenizers.training import _train_settings, adversarial_loss, attach_discriminator, load_perceptual
MAR_KL16_SCALING = 0.2325  # LTH14/mar engine_mar.py
MAR_KL16_ARCH = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=16)  # LTH14/mar models/vae.py


#: diffusers ``AutoencoderKL`` config fields (diffusers 0.3x–0.4x): KLTokenizer's config uses the same names, so
#: its saved folder is also a diffusers ``AutoencoderKL`` folder (same config fields, same parameter names).
AUTOENCODER_KL_FIELDS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                         "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size",
                         "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast",
                         "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention")
#: the LDM spelling of the architecture (configs/kl16.yaml, kl-digits.yaml): accepted by ``__init__``, converted
#: to the diffusers fields by :func:`arch_from_mapping` and not stored.
LDM_ALIASES = ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "resolution", "attn_resolutions",
               "decoder_attn_resolutions", "out_ch", "double_z", "dropout")


def looks_like(state_dict: Mapping[str, Any]) -> bool:
    """Whether a bare state dict is an official LDM / MAR KL autoencoder (``kl16.ckpt``): LDM-layout names
    (``encoder.down.*``), a ``quant_conv`` to 2× the latent channels (a Gaussian posterior), no codebook.
    Pure key/shape inspection (contract item 6)."""
    sd = state_dict
    if "encoder.conv_in.weight" not in sd or "quant_conv.weight" not in sd or "quantize.embedding.weight" in sd:
        return False
    if not any(str(k).startswith("encoder.down.") for k in sd):
        return False
    try:
        return int(sd["quant_conv.weight"].shape[0]) == 2 * int(sd["post_quant_conv.weight"].shape[1])
    except (KeyError, AttributeError, IndexError, TypeError):
        return False


def arch_from_mapping(arch: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config fields from a YAML ``arch`` mapping.

    Either diffusers names (``block_out_channels``, ``latent_channels``, ...) or LDM names (``ch``,
    ``ch_mult``, ``num_res_blocks``, ``z_channels``/``embed_dim``, ``resolution``, ``attn_resolutions``
    for the encoder and ``decoder_attn_resolutions``, default ``attn_resolutions``).
    """
    arch = dict(arch)
    scaling = float(arch.pop("scaling_factor", 1.0))
    if "block_out_channels" in arch:
        allowed = set(AUTOENCODER_KL_FIELDS) - {"scaling_factor"}
        bad = set(arch) - allowed
        if bad:
            raise UserError(f"KL arch: unknown keys {sorted(bad)}")
        n = len(arch["block_out_channels"])
        if not arch.get("down_block_types"):
            arch["down_block_types"] = ["DownEncoderBlock2D"] * n
        if not arch.get("up_block_types"):
            arch["up_block_types"] = ["UpDecoderBlock2D"] * n
        return plain({**arch, "scaling_factor": scaling})
    allowed = {"ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "resolution", "attn_resolutions",
               "decoder_attn_resolutions", "in_channels", "out_ch", "double_z", "dropout", "norm_num_groups"}
    bad = set(arch) - allowed
    if bad:
        raise UserError(f"KL arch: unknown keys {sorted(bad)}; allowed {sorted(allowed | {'scaling_factor'})}")
    try:
        ch, ch_mult = int(arch["ch"]), tuple(int(m) for m in arch["ch_mult"])
        nrb, z = int(arch["num_res_blocks"]), int(arch.get("z_channels", arch.get("embed_dim")))
    except (KeyError, TypeError) as e:
        raise UserError(f"KL arch: missing or bad {e}") from None
    if int(arch.get("embed_dim", z)) != z:
        raise UserError("KL arch: embed_dim must equal z_channels (diffusers' AutoencoderKL has one latent width)")
    if arch.get("double_z", True) is False:
        raise UserError("KL arch: double_z must be true (a KL autoencoder predicts mean and log-variance)")
    if float(arch.get("dropout", 0.0) or 0.0) != 0.0:
        raise UserError("KL arch: dropout must be 0 (diffusers' AutoencoderKL has none)")
    res = int(arch.get("resolution", 256))
    enc_res = set(arch.get("attn_resolutions", ()) or ())
    dec_res = set(arch.get("decoder_attn_resolutions", enc_res) or ())
    n = len(ch_mult)
    ldm = LDMArch(int(arch.get("in_channels", 3)), int(arch.get("out_ch", 3)), ch, ch_mult, nrb, z, z,
                  tuple(i for i in range(n) if res // 2**i in enc_res), tuple(i for i in range(n) if res // 2**i in dec_res))
    cfg = ldm.diffusers_config()
    cfg["norm_num_groups"] = int(arch.get("norm_num_groups", 32))
    return plain({**cfg, "latent_channels": z, "sample_size": res, "scaling_factor": scaling})


class KLTokenizer(ArchAliasesMixin, ModelMixin, ConfigMixin):
    """Continuous tokenizer: images in [-1, 1] ↔ unscaled latents of a diagonal-Gaussian VAE.

    ``encode(x)`` returns the posterior mean μ(x) (unscaled); ``encode(x, sample=True, generator=g)``
    returns μ + σ·ε with ε drawn from ``g``; ``decode(z)`` maps unscaled latents to images in [-1, 1];
    generators see ``z * scaling_factor``.

    The config fields are diffusers' ``AutoencoderKL`` fields and the modules are its ``encoder``,
    ``quant_conv``, ``post_quant_conv`` and ``decoder`` (same parameter names), so the folder
    :meth:`save_pretrained` writes also loads with ``diffusers.AutoencoderKL.from_pretrained``. ``__init__`` also
    takes the LDM spelling of the architecture (``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels``, ...: see
    :func:`arch_from_mapping`), which it converts to the diffusers fields it stores. Under ``.to(torch.bfloat16)``
    the convolutions run in bf16; the posterior arithmetic (log-variance clamp, σ·ε) is float32 and ``encode`` /
    ``decode`` return float32.
    """

    config_name = CONFIG_NAME
    ignore_for_config = list(LDM_ALIASES)

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types: Sequence[str] | None = None,
                 up_block_types: Sequence[str] | None = None, block_out_channels: Sequence[int] = (64,),
                 layers_per_block: int = 1, act_fn: str = "silu", latent_channels: int = 4, norm_num_groups: int = 32,
                 sample_size: int = 32, scaling_factor: float = 1.0, shift_factor: float | None = None,
                 latents_mean: Sequence[float] | None = None, latents_std: Sequence[float] | None = None,
                 force_upcast: bool = True, use_quant_conv: bool = True, use_post_quant_conv: bool = True,
                 mid_block_add_attention: bool = True, *, ch: int | None = None, ch_mult: Sequence[int] | None = None,
                 num_res_blocks: int | None = None, z_channels: int | None = None, embed_dim: int | None = None,
                 resolution: int | None = None, attn_resolutions: Sequence[int] | None = None,
                 decoder_attn_resolutions: Sequence[int] | None = None, out_ch: int | None = None,
                 double_z: bool | None = None, dropout: float | None = None) -> None:
        super().__init__()
        given = dict(zip(LDM_ALIASES, (ch, ch_mult, num_res_blocks, z_channels, embed_dim, resolution, attn_resolutions,
                                       decoder_attn_resolutions, out_ch, double_z, dropout)))
        given = {k: v for k, v in given.items() if v is not None}
        explicit = {k for k in AUTOENCODER_KL_FIELDS} - set(self.config.get("_use_default_values", []))
        if given:  # the LDM spelling: convert and store the diffusers fields instead
            clash = explicit - {"in_channels", "norm_num_groups", "scaling_factor"}
            if clash:
                raise UserError(f"KL arch: use either the LDM names {sorted(given)} or the diffusers names "
                                f"{sorted(clash)}, not both")
            ldm = {**given, "in_channels": in_channels, "scaling_factor": scaling_factor}
            if "norm_num_groups" in explicit:
                ldm["norm_num_groups"] = norm_num_groups
            cfg = arch_from_mapping(ldm)
            self.register_to_config(**cfg, _use_default_values=[k for k in self.config.get("_use_default_values", [])
                                                                if k not in cfg])
        n = len(self.config.block_out_channels)
        fields = {k: plain(self.config[k]) for k in AUTOENCODER_KL_FIELDS}
        if not fields["down_block_types"] or not fields["up_block_types"]:
            fields["down_block_types"] = fields["down_block_types"] or ["DownEncoderBlock2D"] * n
            fields["up_block_types"] = fields["up_block_types"] or ["UpDecoderBlock2D"] * n
            self.register_to_config(down_block_types=fields["down_block_types"], up_block_types=fields["up_block_types"])
        try:
            vae = AutoencoderKL(**fields)
        except (TypeError, ValueError, AttributeError) as e:
            raise UserError(f"bad AutoencoderKL config: {e}") from None
        # diffusers' module names, so the state dict is an AutoencoderKL state dict
        self.encoder, self.decoder = vae.encoder, vae.decoder
        self.quant_conv, self.post_quant_conv = vae.quant_conv, vae.post_quant_conv
        use_mgen_attention(self)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> "KLTokenizer":
        """Random weights from a registry ``arch`` mapping (diffusers or LDM names); unknown keys: ``UserError``."""
        return build_from_arch(cls, arch, "KL")

    @classmethod
    def from_vae(cls, vae: nn.Module, scaling_factor: float | None = None) -> "KLTokenizer":
        """A tokenizer holding a copy of the weights of a diffusers ``AutoencoderKL`` instance."""
        tok = cls(**config_kwargs(cls, dict(vae.config)))
        sd = vae.state_dict()
        check_state_dict(tok.state_dict(), sd, "AutoencoderKL", "AutoencoderKL")
        tok.load_state_dict({k: v.float() for k, v in sd.items()})
        if scaling_factor is not None:
            tok.scaling_factor = scaling_factor
        return tok.eval()

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, config: Any = None, scaling_factor: float | None = None,
                        **kwargs: Any) -> "KLTokenizer":
        """Load a folder written by :meth:`save_pretrained` (diffusers' loader), MAR's official ``kl16.ckpt`` (LDM
        layout), a diffusers ``AutoencoderKL`` folder, an mgen single ``.safetensors`` file (config in its
        metadata, as the shipped ``kl-digits``), or a registered name (``kl16``, ``sd-vae-ft-ema``, ``kl-digits``).

        ``config``: a registry name, YAML file or arch mapping whose ``scaling_factor`` applies to a bare file;
        ``scaling_factor`` overrides the stored/default one; ``torch_dtype`` and diffusers' other loading
        arguments are accepted (the latter are used for a saved folder)."""
        dtype, rest = split_loading_kwargs(kwargs, cls.__name__)
        arch = config_arch(config, cls, "a KL tokenizer")
        p = Path(os.fspath(path_or_name)).expanduser()
        if not p.exists():
            entry, p = resolve_name(str(path_or_name), cls, "a KL tokenizer")
            arch = arch if arch is not None else dict(entry.arch)
        if scaling_factor is None and arch is not None and "scaling_factor" in arch:
            scaling_factor = float(arch["scaling_factor"])
        folder = folder_of(p)
        if folder is not None and is_own_folder(folder, cls):
            tok = load_saved_folder(cls, folder, rest)
        elif folder is not None:
            tok = cls._from_folder(folder)
        else:
            tok = cls._from_file(p, scaling_factor)
        if scaling_factor is not None:
            tok.scaling_factor = scaling_factor
        return finish(tok, dtype)

    @classmethod
    def _from_folder(cls, folder: Path) -> "KLTokenizer":
        """A diffusers ``AutoencoderKL`` folder (or an older mgen folder, the same layout)."""
        cfg_path = folder / CONFIG_NAME
        if not cfg_path.is_file():
            raise WeightsError(f"{folder}: no {CONFIG_NAME} (expected a diffusers AutoencoderKL or mgen tokenizer folder)")
        config = read_json(cfg_path)
        if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise WeightsError(f"{folder}: holds a {config.get('_class_name')}, not an AutoencoderKL")
        weights = [folder / n for n in (WEIGHTS_NAME, "diffusion_pytorch_model.bin", "model.safetensors")]
        found = next((w for w in weights if w.is_file()), None)
        if found is None:
            raise WeightsError(f"{folder}: no weights file ({WEIGHTS_NAME})")
        return cls._build(_diffusers_defaults(config), load_checkpoint(found), str(found))

    @classmethod
    def _from_file(cls, path: Path, scaling_factor: float | None) -> "KLTokenizer":
        ckpt = load_lightning_checkpoint(path)  # LDM's own KL checkpoints are Lightning files
        config = metadata_config(path)
        sd = iter_state_dicts(ckpt, ("model", "state_dict", "model_ema")) or ckpt
        if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsError(f"{path}: no state dict found (expected {{'model': state_dict}} or a flat dict of tensors)")
        if config is not None:
            if config.get("_class_name", "AutoencoderKL") not in ("AutoencoderKL", cls.__name__):
                raise WeightsError(f"{path}: holds a {config.get('_class_name')}, not a KL tokenizer")
            return cls._build(_diffusers_defaults(config), sd, str(path))
        if "encoder.conv_in.weight" in sd and any(k.startswith("encoder.down.") for k in sd):
            return cls._from_ldm_state_dict(sd, scaling_factor, str(path))
        raise WeightsError(f"{path}: neither an LDM autoencoder checkpoint (e.g. MAR's kl16.ckpt) nor an mgen "
                           "tokenizer file; for diffusers weights pass the folder with config.json")

    @classmethod
    def _from_ldm_state_dict(cls, sd: dict[str, torch.Tensor], scaling_factor: float | None, what: str) -> "KLTokenizer":
        arch = infer_ldm_arch(sd, what)
        if not arch.double_z or "quant_conv.weight" not in sd:
            raise WeightsError(f"{what}: only variational LDM autoencoders (double_z, quant_conv) are supported")
        if arch.embed_dim != arch.z_channels or sd["quant_conv.weight"].shape[0] != 2 * arch.embed_dim:
            raise WeightsError(f"{what}: embed_dim {arch.embed_dim} != z_channels {arch.z_channels} is not supported")
        if scaling_factor is None:
            is_mar = (arch.ch, arch.ch_mult, arch.num_res_blocks, arch.z_channels) == tuple(MAR_KL16_ARCH.values())
            scaling_factor = MAR_KL16_SCALING if is_mar else 1.0
        config = {**plain(arch.diffusers_config()), "latent_channels": arch.z_channels,
                  "sample_size": 256, "scaling_factor": float(scaling_factor)}
        return cls._build(config, ldm_to_diffusers(sd, len(arch.ch_mult), what=what), what)

    @classmethod
    def _build(cls, config: Mapping[str, Any], sd: Mapping[str, torch.Tensor], what: str) -> "KLTokenizer":
        try:
            tok = cls(**config_kwargs(cls, config))
        except (TypeError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise WeightsError(f"{what}: bad AutoencoderKL config ({e})") from None
        check_state_dict(tok.state_dict(), sd, what, "AutoencoderKL")
        tok.load_state_dict({k: v.float() for k, v in sd.items()})
        return tok.eval()

    def save_file(self, path: str | os.PathLike) -> None:
        """One self-describing ``.safetensors`` file (config in its metadata), as shipped in ``mgen/weights``."""
        save_safetensors(self.state_dict(), path, metadata={"config": json.dumps(self.config_dict()), "format": "pt"})

    def config_dict(self) -> dict[str, Any]:
        """The stored config (diffusers ``AutoencoderKL`` fields) with ``_class_name``, as JSON data."""
        cfg = {k: plain(v) for k, v in self.config.items() if not k.startswith("_")}
        cfg["_class_name"] = type(self).__name__
        return cfg

    # -- properties -----------------------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        """Generators see ``latent * scaling_factor`` (stored in the config)."""
        return float(self.config.scaling_factor)

    @scaling_factor.setter
    def scaling_factor(self, value: float) -> None:
        self.register_to_config(scaling_factor=float(value))

    @property
    def stride(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.config.latent_channels)

    @property
    def in_channels(self) -> int:
        return int(self.config.in_channels)

    # -- Tokenizer protocol ---------------------------------------------------------------------
    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (clamped to [-30, 20] as in LDM) of q(z|x), float32."""
        x = check_images(x, self.in_channels, self.stride)
        param = self.encoder.conv_in.weight
        h = self.encoder(x.to(device=param.device, dtype=param.dtype))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = h.float().chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor, sample: bool = False,
               generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Unscaled posterior mean μ(x), or with ``sample=True`` a draw μ + σ·ε (ε from ``generator``;
        a list of generators gives one per sample, so sample i does not depend on the batch size)."""
        mean, logvar = self.moments(x)
        if not sample:
            return mean
        std = torch.exp(0.5 * logvar)
        if isinstance(generator, (list, tuple)):
            if len(generator) != mean.shape[0]:
                raise UserError(f"got {len(generator)} generators for a batch of {mean.shape[0]}")
            eps = torch.stack([torch.randn(mean.shape[1:], generator=g, device=g.device, dtype=mean.dtype) for g in generator])
        else:
            dev = generator.device if generator is not None else mean.device
            eps = torch.randn(mean.shape, generator=generator, device=dev, dtype=mean.dtype)
        return mean + std * eps.to(mean.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B×C×h×w) → images, nominally in [-1, 1] (float32).

        Not clamped: the output equals the official LDM ``AutoencoderKL.decode`` (LTH14/mar ``models/vae.py``)
        and diffusers' ``AutoencoderKL.decode(z).sample``; the pipelines and image writers clamp."""
        return self.decode_raw(check_latents(z, self.latent_channels))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder output without clamping (what the official code returns), float32."""
        param = self.decoder.conv_in.weight
        z = z.to(device=param.device, dtype=param.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).float()

    def forward(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
                return_moments: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction D(z) with z the posterior mean or (``sample``) a draw; with ``return_moments`` also
        (mean, logvar). Training goes through here so that a DDP-wrapped model synchronises gradients."""
        mean, logvar = self.moments(x)
        z = mean
        if sample:
            dev = generator.device if generator is not None else mean.device
            eps = torch.randn(mean.shape, generator=generator, device=dev, dtype=mean.dtype).to(mean.device)
            z = mean + torch.exp(0.5 * logvar) * eps
        rec = self.decode_raw(z)
        return (rec, mean, logvar) if return_moments else rec


def _diffusers_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` config completed with diffusers' own defaults (e.g. scaling 0.18215), as
    ``AutoencoderKL.from_pretrained`` would read it; an mgen config (``_class_name`` KLTokenizer) as it is."""
    cfg = {k: v for k, v in config.items() if not str(k).startswith("_")}
    if config.get("_class_name") == KLTokenizer.__name__:
        return cfg
    defaults = {n: p.default for n, p in inspect.signature(AutoencoderKL.__init__).parameters.items()
                if n != "self" and p.default is not inspect.Parameter.empty}
    used = set(config.get("_use_default_values", []))  # diffusers re-applies its defaults for these
    return plain({**defaults, **{k: v for k, v in cfg.items() if k not in used}})


def convert_ldm_checkpoint(src: str | os.PathLike, out: str | os.PathLike, scaling_factor: float | None = None,
                           force: bool = False) -> None:
    """`mgen convert kl16 SRC OUT`: an official LDM-layout checkpoint → a :class:`KLTokenizer` folder, built in a
    temporary sibling and renamed into place (:func:`mgen.fileio.atomic_dir`; ``force`` replaces an mgen output)."""
    with atomic_dir(out, force=force) as tmp:  # refused before anything is read if out is taken
        tok = KLTokenizer.from_pretrained(Path(src), scaling_factor=scaling_factor)
        tok.save_pretrained(tmp)


# -- training ---------------------------------------------------------------------------------------

class KLTrainTask:
    """Reconstruction + β·KL training of the KL autoencoder (LDM appendix G, eq. 25; GAN term optional).

    loss = mean |x − D(z)|  (L1; ``recon: mse`` gives the squared error) + ``kl_weight`` · KL(q(z|x) ‖ N(0,I))
    summed over latent dimensions and averaged over the batch, + ``perceptual_weight`` · LPIPS when a
    user-given LPIPS weights file is configured (:mod:`mgen.tokenizers.lpips`), + the PatchGAN hinge terms
    of :mod:`mgen.tokenizers.patchgan` when ``disc_weight`` > 0.
    """

    def __init__(self, model: KLTokenizer, kl_weight: float = 1e-6, recon: str = "l1",
                 perceptual: nn.Module | None = None, perceptual_weight: float = 0.0,
                 preview: torch.Tensor | None = None, disc_weight: float = 0.0, disc_start: int = 0) -> None:
        if recon not in ("l1", "mse"):
            raise UserError(f"recon must be 'l1' or 'mse', got {recon!r}")
        self.model, self.kl_weight, self.recon = model, float(kl_weight), recon
        self.disc_weight, self.disc_start = float(disc_weight), int(disc_start)
        self.perceptual, self.perceptual_weight = perceptual, float(perceptual_weight)
        self.preview = preview

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        x = batch[0]
        rec, mean, logvar = model(x, sample=True, generator=generator, return_moments=True)
        err = (rec.float() - x.float())
        loss = err.abs().mean() if self.recon == "l1" else err.pow(2).mean()
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum(dim=(1, 2, 3)).mean()
        loss = loss + self.kl_weight * kl
        if self.perceptual is not None and self.perceptual_weight > 0:
            loss = loss + self.perceptual_weight * self.perceptual.to(x.device)(rec.float(), x.float()).mean()
        return loss + adversarial_loss(model, x, rec, self.disc_weight, self.disc_start)

    @torch.no_grad()
    def sample_grid(self, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        """Held-out images (odd rows) above their reconstructions (even rows)."""
        x = self.preview.to(next(model.parameters()).device)
        rec = model.decode(model.encode(x))
        return torch.stack([x, rec], dim=1).reshape(-1, *x.shape[1:]).float().cpu()


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2, i.e. computed on [0, 1]); both are clamped to
    [-1, 1] first, as the images are written (decoders return their raw, unclamped output)."""
    mse = ((x.float().clamp(-1, 1) - y.float().clamp(-1, 1)) / 2).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def build_kl_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of a KL tokenizer config for the one trainer (:mod:`mgen.train.builder`), on the
    offline digits."""
    own, rest = _train_settings(entry)
    cfg = factory.config(rest)
    torch.manual_seed(cfg.seed)
    model = KLTokenizer.from_arch(entry.arch)
    size = int(own.get("image_size", 16))
    x_train, _ = factory.data.digits("train", size=size, channels=model.in_channels)
    x_test, _ = factory.data.digits("test", size=size, channels=model.in_channels)
    perceptual = load_perceptual(own)
    disc_weight, disc_start = attach_discriminator(model, own)
    task = KLTrainTask(model, kl_weight=float(own.get("kl_weight", 1e-6)), recon=own.get("recon", "l1"),
                       perceptual=perceptual, perceptual_weight=float(own.get("perceptual_weight", 0.0)),
                       preview=x_test[:16], disc_weight=disc_weight, disc_start=disc_start)
    return task, (x_train,), cfg


