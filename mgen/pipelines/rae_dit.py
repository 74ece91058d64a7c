"""RAE generation end to end (Zheng et al. 2025, "Diffusion Transformers with Representation Autoencoders"): noise
in the representation space → DiT^DH (or LightningDiT) flow-matching sampler (Euler/Heun, dimension-dependent
shift, guidance interval) → RAE decoder → images.

Same call signature as diffusers' ``DiTPipeline`` (``class_labels, guidance_scale, generator, num_inference_steps,
output_type, return_dict``), with ``method`` = euler | heun.
"""

from __future__ import annotations

from typing import Any

import torch

from mgen.models.lightningdit import LightningDiT
from mgen.pipelines.dit import DiTPipeline
from mgen.samplers.settings import SamplerSettings
from mgen.tokenizers.kl import KLTokenizer
from mgen.tokenizers.rae import RAETokenizer


class RAEDiTPipeline(DiTPipeline):
    """LightningDiT / DiT^DH + RAE (or any continuous) tokenizer + :class:`~mgen.samplers.flow.FlowSampler` settings."""

    default_model = "rae-dit-digits"
    default_sampler = "mgen.samplers.flow:FlowSampler"

    def __init__(self, transformer: LightningDiT, vae: RAETokenizer | KLTokenizer,
                 scheduler: SamplerSettings | None = None) -> None:
        super().__init__(transformer, vae, scheduler)

    @classmethod
    def from_diffusers_folder(cls, folder: Any, **kwargs: Any) -> Any:  # a diffusers DiT folder is a DiTPipeline
        return DiTPipeline.from_diffusers_folder(folder, **kwargs)

    def _run(self, sampler: Any, labels: Any, generator: Any, latents: Any, callback: Any) -> torch.Tensor:
        return sampler.sample(self.transformer, labels, generator=generator, noise=latents, callback=callback)


__all__ = ["RAEDiTPipeline"]
