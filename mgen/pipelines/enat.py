"""Class-conditional ENAT generation (Ni et al., NeurIPS 2024): the MaskGIT pipeline's interface with the
ENAT generator and decoder (:mod:`mgen.samplers.enat`: feature reuse across steps, annealed sampling
temperature ``samp_temp`` — the ``temperature`` argument — and choice temperature ``mask_temp``)."""

from __future__ import annotations

import os
from typing import Any

import torch

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

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
                        tokenizer: str | os.PathLike | torch.nn.Module | None = None, config: str | None = None,
                        device: str | torch.device = "cpu", **sampler_overrides: Any) -> "ENATPipeline":
        """As :meth:`MaskGITPipeline.from_pretrained`; ENAT's ImageNet models use the MaskGIT (JAX) VQGAN
        (``maskgit-vqgan-jax``), which is not a :class:`~mgen.tokenizers.vq.VQTokenizer`: when the config
        names it, a ``tokenizer`` file (``--tokenizer-weights vqgan_jax_strongaug.ckpt``) is loaded with
        :class:`~mgen.tokenizers.maskgit_jax_vq.MaskGITJaxVQTokenizer`; other tokenizers load as before."""
        if not isinstance(tokenizer, torch.nn.Module):
            tokenizer = cls._maskgit_jax_tokenizer(model or cls.family, tokenizer, config) or tokenizer
        return super().from_pretrained(model, weights=weights, tokenizer=tokenizer, config=config, device=device,
                                       **sampler_overrides)

    @classmethod
    def _maskgit_jax_tokenizer(cls, model: str | os.PathLike, tokenizer: str | os.PathLike | None,
                               config: str | None) -> torch.nn.Module | None:
        """The MaskGIT (JAX) VQGAN when the tokenizer spec or the config's tokenizer selects it, else None."""
        from mgen import registry
        from mgen.errors import UserError
        from mgen.tokenizers.maskgit_jax_vq import MaskGITJaxVQTokenizer, is_maskgit_jax_tokenizer

        try:
            if not os.path.exists(os.fspath(model)):
                entry = registry.get(str(model))
            elif config is not None:
                entry = registry.load_config_file(config) if str(config).endswith((".yaml", ".yml")) else registry.get(config)
            else:
                entry = None
        except UserError:
            return None  # the base class reports a bad model/config
        default = entry.tokenizer if entry is not None else None
        if tokenizer is not None and default is not None and os.path.exists(os.fspath(tokenizer)) \
                and is_maskgit_jax_tokenizer(default):
            return MaskGITJaxVQTokenizer.from_pretrained(tokenizer)  # weights for the config's tokenizer
        spec = tokenizer if tokenizer is not None else default
        if spec is not None and is_maskgit_jax_tokenizer(spec):
            return MaskGITJaxVQTokenizer.from_pretrained(spec)
        return None
