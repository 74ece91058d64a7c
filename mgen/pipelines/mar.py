"""MARPipeline: class-conditional image generation with MAR (Li et al. 2024) as a diffusers pipeline.

Components: ``tokenizer`` (KL-16 for the ImageNet models, the pixel patch tokenizer for ``mar-digits``),
``transformer`` (:class:`mgen.models.mar.MAR`, whose diffusion-loss head carries its own diffusion schedule) and
``scheduler`` (:class:`~mgen.samplers.settings.SamplerSettings` of :class:`mgen.samplers.mar.MARSampler`). Latents
are unscaled (÷ the tokenizer's scaling factor) before ``tokenizer.decode``, as the official ``main_mar.py`` does
(``vae.decode(tokens / 0.2325)``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import ImagePipelineOutput

from mgen.errors import UserError
from mgen.fileio import atomic_dir
from mgen.models.mar import MAR
from mgen.pipelines.base import MgenPipeline, as_labels, check_output_type, format_images
from mgen.samplers.recap import wrap as recap_wrap
from mgen.samplers.settings import SamplerSettings
from mgen.tokenizers.kl import KLTokenizer
from mgen.tokenizers.patch import PatchTokenizer
from mgen.tokenizers.latents import decode_latents


class MARPipeline(MgenPipeline):
    """tokenizer + MAR transformer + MAR sampler settings; ``__call__`` runs :class:`~mgen.samplers.mar.MARSampler`."""

    default_model = "mar-digits"
    default_sampler = "mgen.samplers.mar:MARSampler"
    sampler_aliases = {"num_inference_steps": "num_steps", "steps": "num_steps", "guidance_scale": "cfg",
                       "guidance_schedule": "cfg_schedule"}
    model_cpu_offload_seq = "transformer->tokenizer"
    _optional_components = ["tokenizer", "scheduler"]
    _callback_tensor_inputs = ["tokens", "mask"]

    # exact classes: diffusers' from_pipe moves a component over only when its type is listed here
    def __init__(self, tokenizer: PatchTokenizer | KLTokenizer | None, transformer: MAR,
                 scheduler: SamplerSettings | None = None) -> None:
        super().__init__()
        self._init_components(transformer, tokenizer, scheduler)
        self.last_sampler: Any = None

    @torch.no_grad()
    def __call__(self, class_labels: int | Sequence[int] | torch.Tensor | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 guidance_schedule: str | None = None, temperature: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 return_dict: bool = True, *, head_steps: int | None = None, batch_size: int | None = None,
                 profile: bool = False, recap: Any = None,
                 callback_on_step_end: Callable[..., Any] | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] | None = None) -> ImagePipelineOutput | tuple:
        """Sample one image per class label (MAR §3.4 with CFG). ``None`` settings come from the saved sampler
        settings. ``output_type``: "pil", "np" (B, H, W, 3 in [0, 1]), "pt" (B, 3, H, W in [0, 1]) or "latent" (the
        scaled latents). ``class_labels=None`` with ``batch_size`` samples unconditionally. ``generator``: one, or
        one per sample (diffusers' convention). ``recap``: context-feature reuse (:func:`mgen.samplers.recap.wrap`:
        None, True, or ``{"pre_full_steps", "cache_steps", "head_fast_ratio"}``). ``callback_on_step_end(pipe,
        step, timestep, callback_kwargs)`` receives ``tokens`` / ``mask`` after every step."""
        output_type = check_output_type(output_type)
        labels = as_labels(class_labels, self.num_classes)
        if labels is None and batch_size is None:
            raise UserError("give class_labels (or batch_size for unconditional samples)")
        sampler = self.make_sampler(num_steps=num_inference_steps, cfg=guidance_scale, cfg_schedule=guidance_schedule,
                                    temperature=temperature, head_steps=head_steps)
        sampler = recap_wrap(sampler, recap)
        self.last_sampler = sampler
        with self.step_callback(sampler, callback_on_step_end, callback_on_step_end_tensor_inputs) as cb:
            latents = sampler.sample(self.transformer, labels, callback=cb, generator=generator,
                                     batch_size=batch_size, profile=profile)
        latents = latents.float()
        if output_type == "latent":
            images: Any = latents
        else:
            if self.tokenizer is None:
                raise UserError("this pipeline has no tokenizer to decode with; use output_type='latent'")
            images = format_images(decode_latents(self.tokenizer, latents), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def convert_official_checkpoint(src: str | os.PathLike, out: str | os.PathLike, config: str | None = None,
                                tokenizer: str | None = None, ema: bool = True, force: bool = False) -> Path:
    """Official MAR ``checkpoint-last.pth`` → a MARPipeline folder (safetensors; EMA weights by default).

    ``config``: the MAR registry name (default: read from the checkpoint's ``args``); ``tokenizer``: the tokenizer's
    name, file or folder (default: the config's, e.g. kl16, when its weights are found). Without a tokenizer the
    folder holds the transformer and the sampler settings; loading it then needs ``--tokenizer-weights``. The folder
    is built in a temporary sibling and renamed into place (a kill leaves no half-written ``out``).
    """
    from mgen import hub, registry
    from mgen.tokenizers import load_tokenizer

    out = Path(out)
    entry = registry.get(config) if config else None
    tr = MAR.from_pretrained(src, config=config, ema=ema)
    tok = None
    if tokenizer is not None:
        tok_name = entry.tokenizer if entry is not None else None
        p = Path(tokenizer).expanduser()
        tok = load_tokenizer(tok_name, weights=p) if (tok_name and p.is_file()) else load_tokenizer(tokenizer)
    elif entry is not None and entry.tokenizer and hub.find_weights(registry.get(entry.tokenizer)) is not None:
        tok = load_tokenizer(entry.tokenizer)
    settings = SamplerSettings.for_sampler(MARPipeline.default_sampler, dict(entry.sampler) if entry else {})
    pipe = MARPipeline(tokenizer=tok, transformer=tr, scheduler=settings)
    with atomic_dir(out, force=force) as tmp:
        pipe.save_pretrained(tmp)
    return out


__all__ = ["MARPipeline", "convert_official_checkpoint"]
