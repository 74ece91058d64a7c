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

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mgen.errors import UserError, WeightsError
from mgen.tokenizers.kl import CONFIG_NAME, WEIGHTS_NAME, check_images
from mgen.tokenizers.ldm_keys import LDMArch, infer_ldm_arch, ldm_to_diffusers

QUANTIZER_KEY = "mgen_quantizer"  # extra entry in config.json with the options diffusers' quantiser lacks


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with straight-through gradients.

    Options: ``l2_norm`` (compare and return l2-normalised codes and inputs, ViT-VQGAN §3.2), ``ema``
    (codebook follows exponential moving averages of its assigned inputs instead of gradients),
    ``dead_threshold`` (codes whose EMA usage per step falls below it are restarted from random
    encoder outputs of the batch), ``beta`` (commitment weight of eq. 3).
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, l2_norm: bool = False, ema: bool = False,
                 ema_decay: float = 0.99, dead_threshold: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise UserError(f"a codebook needs at least 2 codes of dimension >= 1, got {num_codes}x{dim}")
        self.num_codes, self.dim, self.beta = int(num_codes), int(dim), float(beta)
        self.l2_norm, self.ema, self.ema_decay = bool(l2_norm), bool(ema), float(ema_decay)
        self.dead_threshold, self.eps = float(dead_threshold), float(eps)
        self.embedding = nn.Embedding(self.num_codes, self.dim)
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
        """argmin_k ‖flat − e_k‖ over the codebook (eq. 2), as diffusers' quantiser computes it."""
        codes = self.codes()
        if self.l2_norm:
            flat = F.normalize(flat, dim=-1)
        return torch.argmin(torch.cdist(flat, codes.to(flat.dtype)), dim=1)

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
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
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


class VQTokenizer(nn.Module):
    """Discrete tokenizer: images in [-1, 1] ↔ code indices (B, h, w) of a VQGAN."""

    def __init__(self, vae: nn.Module, quantizer: VectorQuantizer | None = None) -> None:
        super().__init__()
        from mgen.tokenizers.diffusers_attention import use_mgen_attention

        if quantizer is None:
            old = vae.quantize
            quantizer = VectorQuantizer(old.embedding.weight.shape[0], old.embedding.weight.shape[1])
            quantizer.embedding.weight.data.copy_(old.embedding.weight.data)
        vae.quantize = quantizer
        self.vae = use_mgen_attention(vae)
        self.scaling_factor = 1.0  # discrete: generators see indices

    @property
    def quantizer(self) -> VectorQuantizer:
        return self.vae.quantize

    @property
    def codebook_size(self) -> int:
        return self.quantizer.num_codes

    @property
    def stride(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def in_channels(self) -> int:
        return int(self.vae.config.in_channels)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "VQTokenizer":
        """Random weights from a diffusers ``VQModel`` config (+ optional ``mgen_quantizer`` options) or an
        mgen YAML ``arch`` mapping (LDM names + ``codebook_size``, ``embed_dim``, ``l2_norm``, ``ema``, ...)."""
        from diffusers import VQModel

        cfg = dict(config)
        if "ch" in cfg:
            cfg = _arch_from_mapping(cfg)
        qopts = dict(cfg.pop(QUANTIZER_KEY, None) or {})
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        if cfg.get("norm_type", "group") != "group":
            raise UserError("only norm_type 'group' VQModels are supported (not MoVQ's spatial norm)")
        try:
            vae = VQModel.from_config(cfg)
        except (TypeError, ValueError) as e:
            raise UserError(f"bad VQModel config: {e}") from None
        k, d = vae.quantize.embedding.weight.shape
        return cls(vae, VectorQuantizer(k, d, **qopts))

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path) -> "VQTokenizer":
        """Load a diffusers ``VQModel`` folder, the valeoai/Maskgit-pytorch (taming) VQGAN ``last.ckpt``,
        an mgen folder or single ``.safetensors`` file, or a registered name (``maskgit-vqgan``, ``vq-digits``)."""
        from mgen import hub

        p = Path(path_or_name).expanduser()
        if not p.exists():
            from mgen.tokenizers.kl import _check_family

            _check_family(str(path_or_name), "vq", "a VQ tokenizer")
            p = hub.resolve(str(path_or_name), what="tokenizer weights").path
        if p.is_dir():
            return cls._from_folder(p)
        if p.name == WEIGHTS_NAME and (p.parent / CONFIG_NAME).is_file():
            return cls._from_folder(p.parent)
        return cls._from_file(p)

    @classmethod
    def _from_folder(cls, folder: Path) -> "VQTokenizer":
        from mgen.hub import load_checkpoint

        cfg_path = folder / CONFIG_NAME
        if not cfg_path.is_file():
            raise WeightsError(f"{folder}: no {CONFIG_NAME} (expected a diffusers VQModel or mgen tokenizer folder)")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise WeightsError(f"{cfg_path}: not valid JSON ({e})") from None
        if config.get("_class_name", "VQModel") != "VQModel":
            raise WeightsError(f"{folder}: holds a {config.get('_class_name')}, not a VQModel")
        found = next((w for w in (folder / WEIGHTS_NAME, folder / "diffusion_pytorch_model.bin") if w.is_file()), None)
        if found is None:
            raise WeightsError(f"{folder}: no weights file ({WEIGHTS_NAME})")
        return cls._build(config, load_checkpoint(found), str(found))

    @classmethod
    def _from_file(cls, path: Path) -> "VQTokenizer":
        from mgen.hub import iter_state_dicts

        ckpt = load_lightning_checkpoint(path)
        config = None
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if "config" in meta:
                config = json.loads(meta["config"])
        sd = iter_state_dicts(ckpt, ("state_dict", "model")) or ckpt
        if not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsError(f"{path}: no state dict found (expected {{'state_dict': ...}} or a flat dict of tensors)")
        if config is not None:
            return cls._build(config, sd, str(path))
        if "quantize.embedding.weight" in sd and any(k.startswith("encoder.down.") for k in sd):
            return cls._from_taming_state_dict(sd, str(path))
        raise WeightsError(f"{path}: neither a taming/MaskGIT VQGAN checkpoint nor an mgen tokenizer file; "
                           "for diffusers weights pass the folder with config.json")

    @classmethod
    def _from_taming_state_dict(cls, sd: dict[str, torch.Tensor], what: str) -> "VQTokenizer":
        arch = infer_ldm_arch(sd, what)
        k, d = sd["quantize.embedding.weight"].shape
        config = {**arch.diffusers_config(), "latent_channels": arch.z_channels, "num_vq_embeddings": int(k),
                  "vq_embed_dim": int(d), "sample_size": 256, "scaling_factor": 1.0}
        mapped = ldm_to_diffusers({n: v for n, v in sd.items() if not n.startswith("quantize.")}, len(arch.ch_mult),
                                  what=what)
        mapped["quantize.embedding.weight"] = sd["quantize.embedding.weight"]
        return cls._build(config, mapped, what)

    @classmethod
    def _build(cls, config: dict[str, Any], sd: dict[str, torch.Tensor], what: str) -> "VQTokenizer":
        tok = cls.from_config(config)
        own = tok.vae.state_dict()
        sd = dict(sd)
        for extra in ("usage", "cluster_size", "embed_sum"):  # training state: optional in files
            key = f"quantize.{extra}"
            if key in own and key not in sd:
                sd[key] = own[key]
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        if missing or unexpected:
            raise WeightsError(f"{what}: weights do not match the VQModel config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        for k, v in sd.items():
            if own[k].shape != v.shape:
                raise WeightsError(f"{what}: {k} has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}")
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise WeightsError(f"{what}: parameter {k} contains NaN or infinite values")
        tok.vae.load_state_dict({k: v.float() for k, v in sd.items()})
        return tok.eval()

    def config_dict(self) -> dict[str, Any]:
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(self.vae.config).items()}
        cfg["_class_name"] = "VQModel"
        cfg[QUANTIZER_KEY] = self.quantizer.options()
        return cfg

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.vae.state_dict().items()
                if k not in ("quantize.usage", "quantize.cluster_size", "quantize.embed_sum")}

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` (diffusers ``VQModel`` config + ``mgen_quantizer``) + safetensors weights."""
        from mgen.hub import save_safetensors

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = self.config_dict()
        save_safetensors(self.inference_state_dict(), d / WEIGHTS_NAME, metadata={"config": json.dumps(cfg), "format": "pt"})
        tmp = d / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        tmp.replace(d / CONFIG_NAME)

    def save_file(self, path: str | Path) -> None:
        from mgen.hub import save_safetensors

        save_safetensors(self.inference_state_dict(), path, metadata={"config": json.dumps(self.config_dict()), "format": "pt"})

    # -- Tokenizer protocol ---------------------------------------------------------------------
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous pre-quantisation latents (B, dim, h, w)."""
        x = check_images(x, self.in_channels, self.stride)
        param = next(self.vae.parameters())
        return self.vae.quant_conv(self.vae.encoder(x.to(param.dtype)))

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
        """Quantised code vectors (B, dim, h, w) → raw decoder output (not clamped)."""
        return self.vae.decoder(self.vae.post_quant_conv(codes))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) → images, nominally in [-1, 1].

        Not clamped: the output equals taming's ``VQModel.decode_code`` and diffusers' ``VQModel.decode``
        on the same weights; the pipelines and image writers clamp."""
        codes = self.quantizer.lookup(self.check_indices(indices))
        return self.decode_codes(codes)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, VQ loss, indices) with straight-through gradients."""
        q, loss, idx = self.quantizer(self.encode_latents(x), generator)
        return self.decode_codes(q), loss, idx


def _arch_from_mapping(arch: dict[str, Any]) -> dict[str, Any]:
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
    q = {key: arch[key] for key in ("beta", "l2_norm", "ema", "ema_decay", "dead_threshold") if key in arch}
    return {**cfg, "latent_channels": z, "num_vq_embeddings": k, "vq_embed_dim": ldm.embed_dim, "sample_size": res,
            "scaling_factor": 1.0, QUANTIZER_KEY: q}


class _Placeholder:
    """Stands in for pytorch-lightning objects (callbacks, enums) pickled next to a checkpoint's tensors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def load_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`mgen.hub.load_checkpoint`, also for PyTorch-Lightning ``.ckpt`` files such as taming's VQGAN
    ``last.ckpt``: globals under ``pytorch_lightning.`` / ``lightning.`` (callback state next to the weights)
    are read as inert placeholders; any other non-allow-listed global is still refused."""
    from mgen.hub import load_checkpoint, safe_globals

    try:
        return load_checkpoint(path)
    except WeightsError as first:
        if "refused" not in str(first):
            raise
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            raise first from None
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_globals()}
        extra = [n for n in names if n not in allowed]
        if not extra or not all(n.startswith(("pytorch_lightning.", "lightning.", "lightning_fabric.")) for n in extra):
            raise first from None
        try:
            with torch.serialization.safe_globals([*safe_globals(), *[(_Placeholder, n) for n in extra]]):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here means the file is not usable
            raise WeightsError(f"{path}: could not read the Lightning checkpoint ({str(e).splitlines()[0]})") from None
        if not isinstance(obj, dict):
            raise WeightsError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
        return obj


def convert_maskgit_vqgan(src: str | Path, out: str | Path) -> None:
    """`mgen convert maskgit-vqgan SRC OUT`: the taming/MaskGIT VQGAN ``last.ckpt`` → an mgen/diffusers folder."""
    VQTokenizer.from_pretrained(Path(src)).save_pretrained(out)


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
        from mgen.tokenizers.kl import adversarial_loss

        return loss + adversarial_loss(model, x, rec, self.disc_weight, self.disc_start)

    @torch.no_grad()
    def sample_grid(self, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        x = self.preview.to(next(model.parameters()).device)
        rec = model.decode(model.encode(x))
        return torch.stack([x, rec], dim=1).reshape(-1, *x.shape[1:]).float().cpu()


def _register() -> None:
    from mgen.train.tasks import register

    @register("vq")
    def build(entry, out_dir=None, max_steps=None, batch_size=None, seed=None):
        from mgen.tokenizers.digits import digits_images
        from mgen.tokenizers.kl import _train_settings
        from mgen.train.trainer import TrainConfig, Trainer

        own, rest = _train_settings(entry)
        cfg = TrainConfig.from_mapping(rest, out_dir=out_dir or f"runs/{entry.name}", max_steps=max_steps,
                                       batch_size=batch_size, seed=seed)
        torch.manual_seed(cfg.seed)
        model = VQTokenizer.from_config(entry.arch)
        size = int(own.get("image_size", 16))
        x_train, _ = digits_images("train", size=size, channels=model.in_channels)
        x_test, _ = digits_images("test", size=size, channels=model.in_channels)
        perceptual = None
        if own.get("perceptual_weights"):
            from mgen.tokenizers.lpips import LPIPS

            perceptual = LPIPS.from_file(own["perceptual_weights"])
        from mgen.tokenizers.kl import attach_discriminator

        disc_weight, disc_start = attach_discriminator(model, own)
        task = VQTrainTask(model, recon=own.get("recon", "l1"), perceptual=perceptual,
                           perceptual_weight=float(own.get("perceptual_weight", 0.0)), preview=x_test[:16],
                           disc_weight=disc_weight, disc_start=disc_start)
        return Trainer(task, (x_train,), cfg)


_register()
