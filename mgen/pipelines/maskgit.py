"""Class-conditional MaskGIT generation: all-masked code grid → (MaskGIT decoder) → codes → VQ decoder → images.

Chang et al., "MaskGIT: Masked Generative Image Transformer", CVPR 2022 (decoding: §3.2, Alg. 1), with the
valeoai/Maskgit-pytorch ImageNet checkpoint and its VQGAN, or the shipped ``maskgit-digits``. The call signature
follows mgen's other class-conditional pipelines (``class_labels, guidance_scale, generator, num_inference_steps,
output_type, return_dict`` plus the decoder's own settings).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from diffusers import ImagePipelineOutput

from mgen.errors import UserError
from mgen.models.maskgit import MaskGITTransformer
from mgen.pipelines.base import MgenPipeline, as_labels, check_output_type, format_images
from mgen.samplers.recap import wrap as recap_wrap
from mgen.samplers.settings import SamplerSettings
from mgen.tokenizers.maskgit_jax_vq import MaskGITJaxVQTokenizer
from mgen.tokenizers.vq import VQTokenizer
from mgen.tokenizers.latents import decode_codes


class MaskGITPipeline(MgenPipeline):
    """MaskGIT transformer + VQ tokenizer + :class:`mgen.samplers.maskgit.MaskGITSampler` settings."""

    default_model = "maskgit"
    default_sampler = "mgen.samplers.maskgit:MaskGITSampler"
    tokenizer_component = "vqvae"
    sampler_aliases = {"num_inference_steps": "num_steps", "steps": "num_steps", "guidance_scale": "cfg",
                       "guidance_schedule": "cfg_schedule"}
    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["tokens", "mask"]

    # exact classes: diffusers' from_pipe moves a component over only when its type is listed here
    def __init__(self, transformer: MaskGITTransformer, vqvae: VQTokenizer | MaskGITJaxVQTokenizer,
                 scheduler: SamplerSettings | None = None) -> None:
        super().__init__()
        self._init_components(transformer, vqvae, scheduler)
        self.last_sampler: Any = None

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int] | torch.Tensor | int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
        temperature: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        batch_size: int | None = None,
        recap: Any = None,
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        **decoder_settings: Any,
    ) -> ImagePipelineOutput | tuple:
        """One image per class label (``class_labels=None`` + ``batch_size``: unconditional); the same signature as
        :class:`mgen.pipelines.mar.MARPipeline`. ``None`` settings come from the saved sampler settings.
        ``guidance_schedule``: "linear" or "constant" (MaskGIT; ENAT's is linear); ``temperature``: the sampling
        temperature (ENAT: ``samp_temp``, annealed). ``decoder_settings``: the sampler's other fields (MaskGIT:
        schedule, choice_temperature, top_k, top_p; ENAT: mask_temp, reuse, top_k, top_p). ``output_type``: pil,
        np (B, H, W, 3 in [0, 1]), pt (B, 3, H, W in [0, 1]) or latent (the code grids B×h×w). ``recap``:
        context-feature reuse (:func:`mgen.samplers.recap.wrap`)."""
        output_type = check_output_type(output_type)
        allowed = set(self.scheduler.allowed())
        if guidance_schedule is not None and "cfg_schedule" not in allowed and guidance_schedule != "linear":
            raise UserError(f"this model's guidance is linear in the step (official schedule); got {guidance_schedule!r}")
        if guidance_schedule is not None and "cfg_schedule" not in allowed:
            guidance_schedule = None
        sampler = self.make_sampler(num_steps=num_inference_steps, cfg=guidance_scale, cfg_schedule=guidance_schedule,
                                    temperature=temperature, **decoder_settings)
        sampler = recap_wrap(sampler, recap)
        self.last_sampler = sampler
        labels = as_labels(class_labels, self.num_classes, self.transformer.device)
        if labels is None and batch_size is None:
            raise UserError("pass class_labels (or batch_size for unconditional samples)")
        with self.step_callback(sampler, callback_on_step_end, callback_on_step_end_tensor_inputs) as cb:
            codes = sampler.sample(self.transformer, labels, batch_size=batch_size, generator=generator, callback=cb)
        images: Any = codes if output_type == "latent" else format_images(decode_codes(self.vqvae, codes), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


__all__ = ["MaskGITPipeline"]
