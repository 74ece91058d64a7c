"""mgen.samplers: decoding algorithms (MaskGIT, MAR, ENAT, ReCAP, flow/DDPM, DLM, joint sampling).

Each sampler is a plain object holding its decoding hyper-parameters; ``sampler.sample(model, ...,
generator=g)`` drives a generator from all-masked (or pure noise) to a full sample, drawing every
random number from the given ``torch.Generator`` (docs/ARCHITECTURE.md, "The three protocols").
"""

from mgen.samplers.base import Sampler, per_sample_generators

__all__ = ["Sampler", "per_sample_generators"]
