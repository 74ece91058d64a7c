"""Class-conditional ENAT generation (Ni et al., NeurIPS 2024): the MaskGIT pipeline's interface with the ENAT
generator and decoder (:mod:`mgen.samplers.enat`: feature reuse across steps, annealed sampling temperature
``samp_temp`` — the ``temperature`` argument — and choice temperature ``mask_temp``). ENAT's ImageNet models use the
MaskGIT (JAX) VQGAN; which tokenizer class reads a file is the resolver's business (:mod:`mgen.resolver`)."""

from __future__ import annotations

from mgen.models.enat import ENAT
from mgen.pipelines.maskgit import MaskGITPipeline
from mgen.samplers.settings import SamplerSettings
from mgen.tokenizers.maskgit_jax_vq import MaskGITJaxVQTokenizer
from mgen.tokenizers.vq import VQTokenizer


class ENATPipeline(MaskGITPipeline):
    """ENAT transformer + VQ tokenizer + :class:`mgen.samplers.enat.ENATSampler` settings."""

    default_model = "enat-l"
    default_sampler = "mgen.samplers.enat:ENATSampler"
    sampler_aliases = {"num_inference_steps": "num_steps", "steps": "num_steps", "guidance_scale": "cfg",
                       "temperature": "samp_temp"}

    def __init__(self, transformer: ENAT, vqvae: VQTokenizer | MaskGITJaxVQTokenizer,
                 scheduler: SamplerSettings | None = None) -> None:
        super().__init__(transformer, vqvae, scheduler)


__all__ = ["ENATPipeline"]
