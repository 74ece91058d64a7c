"""Class-conditional latent diffusion with a DiT: noise → (DDPM/DDIM sampler) → latents → VAE → images.

The call signature is diffusers' ``DiTPipeline`` (``class_labels, guidance_scale, generator, num_inference_steps,
output_type, return_dict``); guidance is the official DiT ``forward_with_cfg`` (Peebles & Xie 2023), the decoder
divides by the tokenizer's scaling factor (0.18215 for the SD-VAE). A diffusers ``DiTPipeline`` folder
(``DiTTransformer2DModel`` + ``AutoencoderKL`` + a DDPM/DDIM scheduler) loads as it is, its scheduler config
(``clip_sample`` …) honoured.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import ImagePipelineOutput

from mgen.errors import UserError
from mgen.models.dit import DiT
from mgen.pipelines.base import MgenPipeline, check_output_type, format_images
from mgen.resolver import read_json
from mgen.samplers.settings import SamplerSettings
from mgen.tokenizers.kl import KLTokenizer
from mgen.tokenizers.latents import decode_latents


class DiTPipeline(MgenPipeline):
    """DiT + tokenizer (VAE) + DDPM/DDIM sampler settings behind diffusers' ``DiTPipeline.__call__``."""

    default_model = "dit-xl-2"
    default_sampler = "mgen.samplers.ddpm:DDPMSampler"
    tokenizer_component = "vae"
    sampler_aliases = {"steps": "num_inference_steps", "num_steps": "num_inference_steps", "cfg": "guidance_scale"}
    model_cpu_offload_seq = "transformer->vae"
    _callback_tensor_inputs = ["latents"]

    # exact classes: diffusers' from_pipe moves a component over only when its type is listed here
    def __init__(self, transformer: DiT, vae: KLTokenizer, scheduler: SamplerSettings | None = None) -> None:
        super().__init__()
        self._init_components(transformer, vae, scheduler)

    @classmethod
    def from_diffusers_folder(cls, folder: str | os.PathLike, **kwargs: Any) -> "DiTPipeline":
        """A diffusers ``DiTPipeline`` folder: its transformer, its VAE and its scheduler's config."""
        from mgen.samplers.ddpm import DDPMSampler

        folder = Path(folder)
        dtype = kwargs.get("torch_dtype")
        transformer = DiT.from_pretrained(folder / "transformer", torch_dtype=dtype) if dtype is not None else \
            DiT.from_pretrained(folder / "transformer")
        vae = KLTokenizer.from_pretrained(folder / "vae")
        if dtype is not None:
            vae = vae.to(dtype)
        sched = folder / "scheduler" / "scheduler_config.json"
        if not sched.is_file():
            raise UserError(f"{folder}: no scheduler/scheduler_config.json")
        # diffusers' DiTPipeline guides every latent channel (the official DiT only the first three)
        sampler = DDPMSampler.from_scheduler_config(read_json(sched, "a diffusers scheduler config"),
                                                    guidance_channels=None)
        return cls(transformer.eval(), vae.eval(), SamplerSettings.of(sampler))

    def _run(self, sampler: Any, labels: Any, generator: Any, latents: Any, callback: Any) -> torch.Tensor:
        return sampler.sample(self.transformer, labels, generator=generator, latents=latents, callback=callback)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int] | torch.Tensor,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        method: str | None = None,
        latents: torch.Tensor | None = None,
        temperature: float | None = None,
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        **sampler_settings: Any,
    ) -> ImagePipelineOutput | tuple:
        """Generate one image per class label. ``None`` settings fall back to the saved sampler settings (DiT-XL/2:
        250 DDPM steps, guidance 1.5). ``output_type``: pil, np, pt or latent. ``latents``: the initial noise.
        Other keyword arguments are sampler fields (e.g. ``guidance_channels``)."""
        if temperature is not None:
            raise UserError(f"{type(self).__name__} has no temperature setting (it samples a diffusion / flow ODE)")
        output_type = check_output_type(output_type)
        sampler = self.make_sampler(sampler_settings, guidance_scale=guidance_scale,
                                    num_inference_steps=num_inference_steps, method=method)
        with self.step_callback(sampler, callback_on_step_end, callback_on_step_end_tensor_inputs) as cb:
            lat = self._run(sampler, class_labels, generator, latents, cb).float()
        images: Any = lat if output_type == "latent" else format_images(decode_latents(self.vae, lat), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


__all__ = ["DiTPipeline"]
