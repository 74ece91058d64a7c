"""Class-conditional latent diffusion with a DiT: noise → (DDPM/DDIM sampler) → latents → VAE → images.

The call signature is diffusers' ``DiTPipeline`` (``class_labels, guidance_scale, generator,
num_inference_steps, output_type, return_dict``); guidance is the official DiT ``forward_with_cfg``
(Peebles & Xie 2023), the decoder divides by the tokenizer's scaling factor (0.18215 for the SD-VAE).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from mgen.errors import UserError
from mgen.samplers.ddpm import DDPMSampler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → images in [-1, 1] through an mgen tokenizer or a diffusers ``AutoencoderKL``."""
    sf = vars(vae).get("scaling_factor")  # mgen tokenizers keep it as an attribute
    if sf is None:  # diffusers AutoencoderKL keeps it in its config
        sf = getattr(getattr(vae, "config", None), "scaling_factor", None) or 1.0
    z = latents / float(sf)
    param = next(vae.parameters(), None)
    if param is not None:
        z = z.to(param.dtype)
    out = vae.decode(z)
    if hasattr(out, "sample"):  # diffusers AutoencoderKL returns DecoderOutput
        out = out.sample
    return out.float().clamp(-1, 1)


def format_images(images: torch.Tensor, output_type: str) -> Any:
    """Images in [-1, 1] → diffusers' output formats ("pt"/"np" in [0, 1], "pil")."""
    x = (images / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    arr = x.cpu().permute(0, 2, 3, 1).float().numpy()
    if output_type == "np":
        return arr
    return DiffusionPipeline.numpy_to_pil(arr)


class DiTPipeline(DiffusionPipeline):
    """DiT + tokenizer (VAE) + DDPM/DDIM sampler behind diffusers' ``DiTPipeline.__call__``."""

    model_cpu_offload_seq = "transformer->vae"

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, sampler: DDPMSampler | None = None) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae)
        self.sampler = sampler or DDPMSampler()

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "dit-xl-2", weights: str | os.PathLike | None = None,
                        tokenizer: str | os.PathLike | torch.nn.Module | None = None, config: str | None = None,
                        device: str | torch.device = "cpu", **sampler_overrides: Any) -> "DiTPipeline":
        """A registry name (``dit-xl-2``, ``dit-digits``) or a checkpoint path (+ ``config``), its
        tokenizer (the config's ``tokenizer``, e.g. ``sd-vae-ft-ema``, unless given) and sampler settings."""
        from mgen import registry
        from mgen.models.dit import DiT

        entry = None
        if not os.path.exists(os.fspath(model)):
            entry = registry.get(str(model))
        elif config is not None:
            entry = registry.get(config) if not str(config).endswith((".yaml", ".yml")) else registry.load_config_file(config)
        transformer = DiT.from_pretrained(model, config=config or (entry.name if entry else None), weights=weights)
        tok = tokenizer if tokenizer is not None else (entry.tokenizer if entry else None)
        if tok is None:
            raise UserError("no tokenizer: pass tokenizer= (e.g. sd-vae-ft-ema or a VAE folder)")
        vae = load_vae(tok, tokenizer_family(entry)) if not isinstance(tok, torch.nn.Module) else tok
        sampler = DDPMSampler.from_mapping(dict(entry.sampler) if entry else {}, **sampler_overrides)
        pipe = cls(transformer.eval(), vae.eval(), sampler)
        return pipe.to(device)

    def run_sampler(self, sampler: Any, class_labels: Any, generator: torch.Generator | None,
                    latents: torch.Tensor | None) -> torch.Tensor:
        return sampler.sample(self.transformer, class_labels, generator=generator, latents=latents)

    def to(self, *args: Any, **kwargs: Any) -> "DiTPipeline":
        """Move the transformer and the VAE (``pipe.to("cuda")``, ``pipe.to(dtype=torch.bfloat16)``)."""
        for module in (self.transformer, self.vae):
            module.to(*args, **kwargs)
        return self

    @property
    def num_classes(self) -> int:
        return int(self.transformer.config.num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int] | torch.Tensor,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        method: str | None = None,
        latents: torch.Tensor | None = None,
        temperature: float | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate one image per class label. ``None`` settings fall back to the model's config
        (DiT-XL/2: 250 DDPM steps, guidance 1.5). ``output_type``: pil, np, pt or latent."""
        if temperature is not None:
            raise UserError(f"{type(self).__name__} has no temperature setting (it samples a diffusion / flow ODE)")
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
        overrides = dict(guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, method=method)
        sampler = dataclasses.replace(self.sampler, **{k: v for k, v in overrides.items() if v is not None})
        sampler.validate()
        lat = self.run_sampler(sampler, class_labels, generator, latents)
        if output_type == "latent":
            images: Any = lat
        else:
            images = format_images(decode_latents(self.vae, lat), output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def load_vae(name_or_path: str | os.PathLike, family: str | None = None) -> torch.nn.Module:
    """The tokenizer (KL-VAE or RAE) from a registry name or a path (``family`` says which, for paths)."""
    from mgen.models.dit import load_tokenizer

    return load_tokenizer(name_or_path, family)


def tokenizer_family(entry: Any) -> str | None:
    """The family (kl / rae) of the tokenizer a generator config names, if it is registered."""
    from mgen import registry

    if entry is None or not entry.tokenizer:
        return None
    try:
        return registry.get(entry.tokenizer).family
    except UserError:
        return None

