"""RAE generation end to end (Zheng et al. 2025, "Diffusion Transformers with Representation
Autoencoders"): noise in the representation space → DiT^DH (or LightningDiT) flow-matching sampler
(Euler/Heun, dimension-dependent shift, guidance interval) → RAE decoder → images.

Same call signature as diffusers' ``DiTPipeline`` (``class_labels, guidance_scale, generator,
num_inference_steps, output_type, return_dict``), with ``method`` = euler | heun.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mgen.errors import UserError
from mgen.pipelines.dit import DiTPipeline
from mgen.samplers.flow import FlowSampler


class RAEDiTPipeline(DiTPipeline):
    """LightningDiT / DiT^DH + RAE (or any continuous) tokenizer + :class:`FlowSampler`."""

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, sampler: FlowSampler | None = None) -> None:
        super().__init__(transformer, vae, sampler or FlowSampler(shift="auto"))

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "rae-dit-digits", weights: str | os.PathLike | None = None,
                        tokenizer: str | os.PathLike | torch.nn.Module | None = None, config: str | None = None,
                        device: str | torch.device = "cpu", **sampler_overrides: Any) -> "RAEDiTPipeline":
        """A registry name (``rae-dit-digits``) or a checkpoint path (+ ``config``), its tokenizer (the
        config's ``tokenizer`` unless given) and flow-sampler settings (config ``sampler:`` + overrides)."""
        from mgen import registry
        from mgen.models.lightningdit import LightningDiT
        from mgen.pipelines.dit import load_vae, tokenizer_family

        entry = None
        if not os.path.exists(os.fspath(model)):
            entry = registry.get(str(model))
        elif config is not None:
            entry = registry.load_config_file(config) if str(config).endswith((".yaml", ".yml")) else registry.get(config)
        transformer = LightningDiT.from_pretrained(model, config=config or (entry.name if entry else None), weights=weights)
        tok = tokenizer if tokenizer is not None else (entry.tokenizer if entry else None)
        if tok is None:
            raise UserError("no tokenizer: pass tokenizer= (the RAE the model was trained on)")
        vae = load_vae(tok, tokenizer_family(entry) or "rae") if not isinstance(tok, torch.nn.Module) else tok
        sampler = FlowSampler.from_mapping(dict(entry.sampler) if entry else {"shift": "auto"}, **sampler_overrides)
        return cls(transformer.eval(), vae.eval(), sampler).to(device)

    def run_sampler(self, sampler: Any, class_labels: Any, generator: torch.Generator | None,
                    latents: torch.Tensor | None) -> torch.Tensor:
        return sampler.sample(self.transformer, class_labels, generator=generator, noise=latents)
