"""The Sampler protocol and the per-sample randomness that makes batches reproducible."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Sampler(Protocol):
    """A decoding algorithm: hyper-parameters as attributes, one ``sample`` entry point."""

    def sample(self, model: torch.nn.Module, *args: Any, generator: torch.Generator | None = None, **kwargs: Any) -> Any:
        ...


def per_sample_generators(
    generator: torch.Generator | list[torch.Generator] | None, batch_size: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per sample index, derived from ``generator``'s current state.

    Drawing a sample's noise from its own stream makes sample *i* the same whatever the batch size
    (docs/ARCHITECTURE.md, "The three protocols": same seed ⇒ same sample for each index). The seeds come from one draw of the parent
    generator, so the parent advances exactly once per call.
    """
    if isinstance(generator, (list, tuple)):  # diffusers' convention: one generator per sample, used as is
        if len(generator) != batch_size:
            from mgen.errors import UserError

            raise UserError(f"got {len(generator)} generators for a batch of {batch_size}")
        return list(generator)
    if generator is None:
        generator = torch.Generator(device="cpu")
        generator.seed()
    base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    gens = []
    for i in range(batch_size):
        g = torch.Generator(device=device)
        g.manual_seed((base + 0x9E3779B97F4A7C15 * (i + 1)) % (2**63 - 1))
        gens.append(g)
    return gens
