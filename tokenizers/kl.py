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

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mgen.errors import UserError, WeightsError
from mgen.tokenizers.ldm_keys import LDMArch, infer_ldm_arch, ldm_to_diffusers

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
MAR_KL16_SCALING = 0.2325  # LTH14/mar engine_mar.py
MAR_KL16_ARCH = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=16)  # LTH14/mar models/vae.py


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


def _check_family(name: str, family: str, what: str) -> None:
    """A registered name must belong to the tokenizer family that loads it (checked before weights are looked for)."""
    from mgen import registry

    if any(e.name == name for e in registry.list_models()):
        entry = registry.get(name)
        if entry.family != family:
            raise UserError(f"{name} is a {entry.family!r} model, not {what}")


def arch_from_mapping(arch: dict[str, Any]) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` config from a YAML ``arch`` mapping.

    Either diffusers names (``block_out_channels``, ``latent_channels``, ...) or LDM names (``ch``,
    ``ch_mult``, ``num_res_blocks``, ``z_channels``/``embed_dim``, ``resolution``, ``attn_resolutions``
    for the encoder and ``decoder_attn_resolutions``, default ``attn_resolutions``).
    """
    arch = dict(arch)
    scaling = float(arch.pop("scaling_factor", 1.0))
    if "block_out_channels" in arch:
        allowed = {"in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                   "layers_per_block", "latent_channels", "norm_num_groups", "sample_size", "shift_factor",
                   "mid_block_add_attention", "force_upcast"}
        bad = set(arch) - allowed
        if bad:
            raise UserError(f"KL arch: unknown keys {sorted(bad)}")
        n = len(arch["block_out_channels"])
        arch.setdefault("down_block_types", ["DownEncoderBlock2D"] * n)
        arch.setdefault("up_block_types", ["UpDecoderBlock2D"] * n)
        return {**arch, "scaling_factor": scaling}
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
    res = int(arch.get("resolution", 256))
    enc_res = set(arch.get("attn_resolutions", ()))
    dec_res = set(arch.get("decoder_attn_resolutions", enc_res))
    n = len(ch_mult)
    ldm = LDMArch(int(arch.get("in_channels", 3)), int(arch.get("out_ch", 3)), ch, ch_mult, nrb, z, z,
                  tuple(i for i in range(n) if res // 2**i in enc_res), tuple(i for i in range(n) if res // 2**i in dec_res))
    cfg = ldm.diffusers_config()
    cfg["norm_num_groups"] = int(arch.get("norm_num_groups", 32))
    return {**cfg, "latent_channels": z, "sample_size": res, "scaling_factor": scaling}


class KLTokenizer(nn.Module):
    """Continuous tokenizer: images in [-1, 1] ↔ unscaled latents of a diagonal-Gaussian VAE.

    ``encode(x)`` returns the posterior mean μ(x) (unscaled); ``encode(x, sample=True, generator=g)``
    returns μ + σ·ε with ε drawn from ``g``; ``decode(z)`` maps unscaled latents to images in [-1, 1];
    generators see ``z * scaling_factor``.
    """

    def __init__(self, vae: nn.Module, scaling_factor: float | None = None) -> None:
        super().__init__()
        from mgen.tokenizers.diffusers_attention import use_mgen_attention

        self.vae = use_mgen_attention(vae)
        self.scaling_factor = float(vae.config.scaling_factor if scaling_factor is None else scaling_factor)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "KLTokenizer":
        """Random weights from a diffusers ``AutoencoderKL`` config or an mgen YAML ``arch`` mapping."""
        from diffusers import AutoencoderKL

        cfg = dict(config)
        if "ch" in cfg or ("block_out_channels" in cfg and "_class_name" not in cfg):
            cfg = arch_from_mapping(cfg)
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        try:
            vae = AutoencoderKL.from_config(cfg)
        except (TypeError, ValueError) as e:
            raise UserError(f"bad AutoencoderKL config: {e}") from None
        return cls(vae)

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path, scaling_factor: float | None = None) -> "KLTokenizer":
        """Load MAR's official ``kl16.ckpt`` (LDM layout), a diffusers ``AutoencoderKL`` folder, an mgen
        ``save_pretrained`` folder or single ``.safetensors`` file, or a registered name (``kl16``,
        ``sd-vae-ft-ema``, ``kl-digits``). ``scaling_factor`` overrides the stored/default one."""
        from mgen import hub

        entry = None
        p = Path(path_or_name).expanduser()
        if not p.exists():
            _check_family(str(path_or_name), "kl", "a KL tokenizer")
            resolved = hub.resolve(str(path_or_name), what="tokenizer weights")
            entry, p = resolved.entry, resolved.path
        if scaling_factor is None and entry is not None and "scaling_factor" in entry.arch:
            scaling_factor = float(entry.arch["scaling_factor"])
        if p.is_dir():
            return cls._from_folder(p, scaling_factor)
        if p.name == WEIGHTS_NAME and (p.parent / CONFIG_NAME).is_file():
            return cls._from_folder(p.parent, scaling_factor)
        return cls._from_file(p, scaling_factor)

    @classmethod
    def _from_folder(cls, folder: Path, scaling_factor: float | None) -> "KLTokenizer":
        cfg_path = folder / CONFIG_NAME
        if not cfg_path.is_file():
            raise WeightsError(f"{folder}: no {CONFIG_NAME} (expected a diffusers AutoencoderKL or mgen tokenizer folder)")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise WeightsError(f"{cfg_path}: not valid JSON ({e})") from None
        if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise WeightsError(f"{folder}: holds a {config.get('_class_name')}, not an AutoencoderKL")
        weights = [folder / n for n in (WEIGHTS_NAME, "diffusion_pytorch_model.bin", "model.safetensors")]
        found = next((w for w in weights if w.is_file()), None)
        if found is None:
            raise WeightsError(f"{folder}: no weights file ({WEIGHTS_NAME})")
        from mgen.hub import load_checkpoint

        return cls._build(config, load_checkpoint(found), scaling_factor, str(found))

    @classmethod
    def _from_file(cls, path: Path, scaling_factor: float | None) -> "KLTokenizer":
        from mgen.hub import iter_state_dicts
        from mgen.tokenizers.vq import load_lightning_checkpoint  # LDM's own KL checkpoints are Lightning files

        ckpt = load_lightning_checkpoint(path)
        config = None
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if "config" in meta:
                config = json.loads(meta["config"])
        sd = iter_state_dicts(ckpt, ("model", "state_dict", "model_ema")) or ckpt
        if not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsError(f"{path}: no state dict found (expected {{'model': state_dict}} or a flat dict of tensors)")
        if config is not None:
            return cls._build(config, sd, scaling_factor, str(path))
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
        config = {**arch.diffusers_config(), "latent_channels": arch.z_channels,
                  "sample_size": 256, "scaling_factor": float(scaling_factor)}
        return cls._build(config, ldm_to_diffusers(sd, len(arch.ch_mult), what=what), scaling_factor, what)

    @classmethod
    def _build(cls, config: dict[str, Any], sd: dict[str, torch.Tensor], scaling_factor: float | None, what: str) -> "KLTokenizer":
        tok = cls.from_config(config)
        missing, unexpected = [], []
        own = tok.vae.state_dict()
        for k in own:
            if k not in sd:
                missing.append(k)
        for k, v in sd.items():
            if k not in own:
                unexpected.append(k)
            elif own[k].shape != v.shape:
                raise WeightsError(f"{what}: {k} has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}")
        if missing or unexpected:
            raise WeightsError(f"{what}: weights do not match the AutoencoderKL config (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
        for k, v in sd.items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise WeightsError(f"{what}: parameter {k} contains NaN or infinite values")
        tok.vae.load_state_dict({k: v.float() for k, v in sd.items()})
        if scaling_factor is not None:
            tok.scaling_factor = float(scaling_factor)
        return tok.eval()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` (diffusers ``AutoencoderKL`` config) + ``diffusion_pytorch_model.safetensors``.

        The folder loads with :meth:`from_pretrained` and with ``diffusers.AutoencoderKL.from_pretrained``.
        """
        from mgen.hub import save_safetensors

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        config = self.config_dict()
        save_safetensors(self.vae.state_dict(), d / WEIGHTS_NAME, metadata={"config": json.dumps(config), "format": "pt"})
        tmp = d / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(d / CONFIG_NAME)

    def save_file(self, path: str | Path) -> None:
        """One self-describing ``.safetensors`` file (config in its metadata), as shipped in ``mgen/weights``."""
        from mgen.hub import save_safetensors

        save_safetensors(self.vae.state_dict(), path, metadata={"config": json.dumps(self.config_dict()), "format": "pt"})

    def config_dict(self) -> dict[str, Any]:
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(self.vae.config).items()}
        cfg["_class_name"] = "AutoencoderKL"
        cfg["scaling_factor"] = self.scaling_factor
        return cfg

    # -- properties -----------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def in_channels(self) -> int:
        return int(self.vae.config.in_channels)

    # -- Tokenizer protocol ---------------------------------------------------------------------
    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (clamped to [-30, 20] as in LDM) of q(z|x)."""
        x = check_images(x, self.in_channels, self.stride)
        param = next(self.vae.parameters())
        h = self.vae.encoder(x.to(param.dtype))
        if self.vae.quant_conv is not None:
            h = self.vae.quant_conv(h)
        mean, logvar = h.chunk(2, dim=1)
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
        """Unscaled latents (B×C×h×w) → images, nominally in [-1, 1].

        Not clamped: the output equals the official LDM ``AutoencoderKL.decode`` (LTH14/mar ``models/vae.py``)
        and diffusers' ``AutoencoderKL.decode(z).sample``; the pipelines and image writers clamp."""
        return self.decode_raw(check_latents(z, self.latent_channels))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder output without clamping (what the official code returns)."""
        param = next(self.vae.parameters())
        z = z.to(param.dtype)
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        return self.vae.decoder(z)

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


def convert_ldm_checkpoint(src: str | Path, out: str | Path, scaling_factor: float | None = None) -> None:
    """`mgen convert kl16 SRC OUT`: an official LDM-layout checkpoint → an mgen/diffusers folder."""
    tok = KLTokenizer.from_pretrained(Path(src), scaling_factor=scaling_factor)
    tok.save_pretrained(out)


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


def _train_settings(entry: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``entry.train`` into the tokenizer's own settings and the shared TrainConfig's."""
    own_keys = {"kl_weight", "recon", "image_size", "perceptual_weights", "perceptual_weight", "commit_weight",
                "noise_tau", "encoder", "stats_samples", "mae_steps", "mae_lr", "mae_mask_ratio",
                "disc_weight", "disc_start", "disc_layers", "disc_channels"}
    own = {k: v for k, v in entry.train.items() if k in own_keys}
    rest = {k: v for k, v in entry.train.items() if k not in own_keys}
    return own, rest


def attach_discriminator(model: nn.Module, own: dict[str, Any]) -> tuple[float, int]:
    """With ``disc_weight`` > 0 in the train settings, register a PatchGAN as ``model.discriminator``
    (so the shared trainer optimises and checkpoints it); returns (weight, start step)."""
    weight = float(own.get("disc_weight", 0.0))
    if weight > 0:
        from mgen.tokenizers.patchgan import PatchDiscriminator

        model.discriminator = PatchDiscriminator(3, int(own.get("disc_channels", 64)), int(own.get("disc_layers", 3)))
    return weight, int(own.get("disc_start", 0))


def adversarial_loss(model: nn.Module, x: torch.Tensor, rec: torch.Tensor, weight: float, start: int) -> torch.Tensor | float:
    disc = getattr(getattr(model, "module", model), "discriminator", None)  # (unwrap DDP)
    if disc is None or weight <= 0:
        return 0.0
    from mgen.tokenizers.patchgan import adversarial_terms

    return adversarial_terms(disc, x.float(), rec.float(), weight, start)


def _register() -> None:
    from mgen.train.tasks import register

    @register("kl")
    def build(entry, out_dir=None, max_steps=None, batch_size=None, seed=None):
        from mgen.tokenizers.digits import digits_images
        from mgen.train.trainer import TrainConfig, Trainer

        own, rest = _train_settings(entry)
        cfg = TrainConfig.from_mapping(rest, out_dir=out_dir or f"runs/{entry.name}", max_steps=max_steps,
                                       batch_size=batch_size, seed=seed)
        torch.manual_seed(cfg.seed)
        model = KLTokenizer.from_config(entry.arch)
        size = int(own.get("image_size", 16))
        x_train, _ = digits_images("train", size=size, channels=model.in_channels)
        x_test, _ = digits_images("test", size=size, channels=model.in_channels)
        perceptual = None
        if own.get("perceptual_weights"):
            from mgen.tokenizers.lpips import LPIPS

            perceptual = LPIPS.from_file(own["perceptual_weights"])
        disc_weight, disc_start = attach_discriminator(model, own)
        task = KLTrainTask(model, kl_weight=float(own.get("kl_weight", 1e-6)), recon=own.get("recon", "l1"),
                           perceptual=perceptual, perceptual_weight=float(own.get("perceptual_weight", 0.0)),
                           preview=x_test[:16], disc_weight=disc_weight, disc_start=disc_start)
        return Trainer(task, (x_train,), cfg)


_register()
