"""k tokens per full forward: ADJUST approximate joint sampling, or plain marginal sampling as the baseline.

Bansal & Sanghavi 2025, "Enabling Approximate Joint Sampling in Diffusion LMs" (arXiv:2509.22738), inference:
one full forward of the frozen base model, then k times: pick the lowest-entropy masked position under the
*current* logits, sample its token, and run the sampler layer (:class:`mgen.models.joint_sampler.JointSamplerLayer`)
to refresh hidden states and logits — the pass after the k-th token is skipped (the next full forward replaces it).
So a step costs 1 full forward + (k − 1) sampler passes and unmasks k tokens.

Without a layer (``layer=None``) the same loop keeps the full forward's logits for all k picks: k tokens
sampled independently from their marginals (the baseline whose drift from the joint ADJUST corrects). With
k = 1 both are exact one-token-per-forward decoding (:class:`mgen.samplers.dlm.ExactSampler`, order
``entropy``), draw for draw.

``log_q`` (per sample, after :meth:`JointSampler.sample`) holds the log-probability of every sampled token
under the distribution it was drawn from — the sampler's own sequence log-likelihood, used by the benchmark
to estimate KL(q ‖ p_exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators
from mgen.samplers.dlm import SampleStats, StepCallback, _check_common, apply_eos, pick_and_sample, prepare_prompts, \
    run_callback


@dataclass
class JointSampler:
    """k tokens per full forward, with the ADJUST layer (approximately joint) or without it (marginal)."""

    gen_length: int = 64
    tokens_per_step: int = 4
    block_length: int | None = None
    temperature: float = 1.0
    eos: str = "none"
    stats: SampleStats = field(default_factory=SampleStats, init=False, repr=False)
    log_q: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_common(self.gen_length, self.gen_length, self.block_length, self.temperature, self.eos)
        if not isinstance(self.tokens_per_step, int) or not 1 <= self.tokens_per_step <= self.gen_length:
            raise UserError(f"tokens_per_step must be between 1 and gen_length={self.gen_length} "
                            f"(got {self.tokens_per_step!r})")

    @property
    def total_steps(self) -> int:
        """Step callbacks per call: one per full forward, ceil(gen_length / tokens_per_step)."""
        return math.ceil(self.gen_length / self.tokens_per_step)

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]] | torch.Tensor,
               layer: torch.nn.Module | None = None, generator: torch.Generator | None = None,
               callback: StepCallback | None = None) -> torch.Tensor:
        """Full sequences (B, P + gen_length). ``layer``: a trained sampler layer, or None for marginal."""
        if layer is not None:
            layer.check_base(model)
        device = next(model.parameters()).device
        x, attn, p = prepare_prompts(prompts, self.gen_length, model.mask_id, model.pad_id, device)
        attn_arg = None if bool(attn.all()) else attn
        b = x.shape[0]
        gens = per_sample_generators(generator, b, "cpu")
        bl = self.block_length or self.gen_length
        self.stats = SampleStats(tokens=b * self.gen_length)
        self.log_q = torch.zeros(b, dtype=torch.float64)
        done = 0
        step = 0
        while done < self.gen_length:
            if layer is not None:
                logits, h = model.forward_with_hidden(x, attn_arg)
            else:
                logits = model(x, attn_arg)
            self.stats.full_forwards += 1
            logits = _no_mask(logits, model.mask_id)
            picked = torch.zeros_like(x, dtype=torch.bool)
            for j in range(self.tokens_per_step):
                if done >= self.gen_length:
                    break
                limit = p + (done // bl + 1) * bl
                for r in range(b):
                    cand = (x[r] == model.mask_id)
                    i, tok = pick_and_sample(logits[r], cand, "entropy", self.temperature, gens[r], limit)
                    lp = (logits[r, i].double() / max(self.temperature, 1e-8)).log_softmax(-1)[tok] \
                        if self.temperature > 0 else torch.tensor(0.0, dtype=torch.float64)
                    self.log_q[r] += float(lp)
                    x[r, i] = tok
                    picked[r, i] = True
                done += 1
                last_of_step = j == self.tokens_per_step - 1 or done >= self.gen_length
                if layer is not None and not last_of_step:
                    logits, h = layer(model, h, x, attn_arg)
                    logits = _no_mask(logits, model.mask_id)
                    self.stats.sampler_passes += 1
            x = run_callback(callback, step, 1 - done / self.gen_length, x)
            step += 1
        if self.eos != "none":
            apply_eos(x, p, x.shape[1], model.eos_id, self.eos, model.eos_id if self.eos == "stop" else model.pad_id)
        return x


def _no_mask(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """float32 logits (whatever the model's dtype) with the mask token's logit at the minimum."""
    logits = logits.float().clone()
    logits[..., mask_id] = torch.finfo(logits.dtype).min
    return logits
