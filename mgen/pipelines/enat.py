"""Class-conditional ENAT generation (Ni et al., NeurIPS 2024): the MaskGIT pipeline's interface with the
ENAT generator and decoder (:mod:`mgen.samplers.enat`: feature reuse across steps, annealed sampling
temperature ``samp_temp`` — the ``temperature`` argument — and choice temperature ``mask_temp``)."""

from __future__ import annotations

from mgen.pipelines.maskgit import MaskGITPipeline


class ENATPipeline(MaskGITPipeline):
    """ENAT transformer + VQ tokenizer + :class:`mgen.samplers.enat.ENATSampler`."""

    family = "enat"

    @staticmethod
    def _model_cls() -> type:
        from mgen.models.enat import ENAT

        return ENAT

    @staticmethod
    def _sampler_cls() -> type:
        from mgen.samplers.enat import ENATSampler

        return ENATSampler
