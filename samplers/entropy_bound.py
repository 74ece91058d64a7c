"""Entropy-bounded (EB) sampling for masked diffusion LMs, and EB + ADJUST (adaptive k with the joint layer).

EB sampler (Ben-Hamu et al. 2025, "Accelerated Sampling from Masked Diffusion Models via Entropy Bounded
Unmasking", arXiv 2505.24857, Alg. 1; the rule transformers 5.24 ships as ``EntropyBoundSampler.accept_canvas``):
after one full forward, sort the masked positions of the current block by the entropy H of their predicted
distribution and unmask the largest prefix with

    Σ_{i≤k} H_i − max_{i≤k} H_i ≤ γ        (γ = ``entropy_bound``),

the left side bounding the mutual information between the chosen tokens, so they are close to independent and
sampling them together from their marginals costs little. The first (lowest-entropy) position always passes,
so every step unmasks at least one token; γ → 0 unmasks exactly one per forward, the lowest-entropy one: the
exact sampler :class:`mgen.samplers.dlm.ExactSampler` (order ``entropy``), draw for draw.

The positions are taken one at a time in that order and each token is drawn right away (multinomial on its own
row's generator, float64 softmax at ``temperature``, as the exact sampler); the bound is checked on the
entropies as they are taken. Without a layer the logits do not change within a step, so this is the sorted-
prefix rule above exactly. With an ADJUST layer (Bansal & Sanghavi 2025, arXiv 2509.22738;
:class:`mgen.models.joint_sampler.JointSamplerLayer`) each accepted token is followed by one sampler-layer pass
that refreshes the logits, and the next position and its entropy come from the refreshed logits: the number of
tokens per forward adapts to the entropies (EB) while each token is conditioned on the ones chosen before it
(ADJUST). A pass is skipped when no row of the step can take another token (block full, or
``max_tokens_per_step`` reached); otherwise it is needed to decide whether the next token passes the bound.

Entropies are computed in float64 from the temperature-1 logits (as the exact sampler orders positions);
tokens are drawn at ``temperature``. Blocks: a step only unmasks positions of its row's current block (the
block of its first masked position) and ends when that block is full.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators
from mgen.samplers.dlm import SampleStats, _check_common, apply_eos, model_logits, prepare_prompts

StepCallback = Callable[[int, float, dict], "dict | None"]


def entropies(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (float64) of softmax(logits) over the last axis."""
    return torch.special.entr(logits.double().softmax(-1)).sum(-1)


def eb_accept(logits: torch.Tensor, entropy_bound: float, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """The EB acceptance set on fixed logits: (..., N, V) → (..., N) bool (transformers' ``accept_canvas``).

    ``candidates`` (..., N) limits the choice to those positions (the masked ones of a block); the others are
    never accepted and do not count in the sums.
    """
    h = entropies(logits)
    if candidates is not None:
        h = h.masked_fill(~candidates, float("inf"))
    sorted_h, order = torch.sort(h, dim=-1, stable=True)
    cum = torch.cumsum(sorted_h.nan_to_num(posinf=0.0), dim=-1)
    sel = (cum - sorted_h <= entropy_bound) & torch.isfinite(sorted_h)
    return torch.zeros_like(sel).scatter(-1, order, sel)


def _draw(row_logits: torch.Tensor, temperature: float, generator: torch.Generator,
          forced: int | None = None) -> tuple[int, float]:
    """One token from a position's tempered conditional, exactly as ExactSampler draws it (float64 softmax,
    multinomial on the row's generator), and its log-probability there; ``forced``: score that token instead."""
    row = row_logits.double()
    if temperature == 0:
        tok = int(row.argmax()) if forced is None else int(forced)
        return tok, 0.0 if tok == int(row.argmax()) else float("-inf")
    scaled = row / temperature
    if forced is None:
        forced = int(torch.multinomial(scaled.softmax(-1).cpu(), 1, generator=generator))
    return int(forced), float(scaled.log_softmax(-1)[int(forced)])


def _no_mask(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    return logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), torch.finfo(logits.dtype).min)


@dataclass
class EntropyBoundSampler:
    """EB sampling within blocks; with ``sample(..., layer=ADJUST layer)`` the EB + ADJUST hybrid."""

    gen_length: int = 64
    entropy_bound: float = 0.1
    block_length: int | None = None
    temperature: float = 1.0
    max_tokens_per_step: int | None = None  # None: only the bound limits a step
    eos: str = "none"
    stats: SampleStats = field(default_factory=SampleStats, init=False, repr=False)
    log_q: torch.Tensor | None = field(default=None, init=False, repr=False)
    tokens_per_forward: torch.Tensor | None = field(default=None, init=False, repr=False)
    row_forwards: torch.Tensor | None = field(default=None, init=False, repr=False)  # (B,) full forwards a row used
    row_passes: torch.Tensor | None = field(default=None, init=False, repr=False)  # (B,) layer passes a row used

    def __post_init__(self) -> None:
        if not isinstance(self.entropy_bound, (int, float)) or not self.entropy_bound > 0:
            raise UserError(f"entropy bound must be > 0 (got {self.entropy_bound!r})")
        _check_common(self.gen_length, self.gen_length, self.block_length, self.temperature, self.eos)
        if self.max_tokens_per_step is not None and (not isinstance(self.max_tokens_per_step, int)
                                                     or self.max_tokens_per_step < 1):
            raise UserError(f"max_tokens_per_step must be a positive integer (got {self.max_tokens_per_step!r})")

    @property
    def total_steps(self) -> int:
        """The most callback calls (one token per forward); EB usually needs fewer."""
        return self.gen_length

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]] | torch.Tensor,
               generator: torch.Generator | list[torch.Generator] | None = None,
               callback: StepCallback | None = None, layer: torch.nn.Module | None = None,
               teacher_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Full sequences (B, P + gen_length): left-padded prompts, then the generated tokens.

        ``teacher_tokens`` (B, gen_length): follow this sampler's rule but place these tokens instead of drawing
        them — ``log_q`` is then the sampler's log-probability of those strings (each string has one path).

        ``callback(step, masked_fraction, {"x": x})`` after every full-forward step; a returned ``{"x": …}``
        replaces the sequence. ``layer``: an ADJUST sampler layer for the hybrid (mgen's own base models).
        """
        mask_id = getattr(model, "mask_id", None)
        if mask_id is None:
            raise UserError(f"entropy-bounded sampling needs a masked diffusion LM; {type(model).__name__} "
                            "has no mask token")
        if layer is not None:
            if not hasattr(model, "forward_with_hidden"):
                raise UserError("EB + ADJUST needs mgen's own masked diffusion LM (forward_with_hidden) as base")
            layer.check_base(model)
        device = next(model.parameters()).device
        x, attn, p = prepare_prompts(prompts, self.gen_length, mask_id, model.pad_id, device)
        attn_arg = None if bool(attn.all()) else attn
        b = x.shape[0]
        gens = per_sample_generators(generator, b, "cpu")
        bl = self.block_length or self.gen_length
        cap = self.max_tokens_per_step or self.gen_length
        self.stats = SampleStats(tokens=b * self.gen_length)
        self.log_q = torch.zeros(b, dtype=torch.float64)
        forwards = torch.zeros(b, dtype=torch.long)
        passes = torch.zeros(b, dtype=torch.long)
        filled = [0] * b
        step = 0
        while min(filled) < self.gen_length:
            h = None
            if layer is not None:
                logits, h = model.forward_with_hidden(x, attn_arg)
                logits = _no_mask(logits, mask_id)
            else:
                logits = model_logits(model, x, attn, forbid_mask=True)
            self.stats.full_forwards += 1
            running = [r for r in range(b) if filled[r] < self.gen_length]
            for r in running:
                forwards[r] += 1
            # per row: this step's block, the entropies taken so far, still accepting?
            limits = {r: p + (filled[r] // bl + 1) * bl for r in running}
            taken: dict[int, list[float]] = {r: [] for r in running}
            open_rows = list(running)
            while open_rows:
                for r in list(open_rows):
                    cand = (x[r] == mask_id)
                    cand[limits[r]:] = False
                    pos = cand.nonzero().squeeze(-1)
                    if pos.numel() == 0 or len(taken[r]) >= cap:
                        open_rows.remove(r)
                        continue
                    ent = entropies(logits[r, pos])
                    j = int(ent.argmin())
                    hj = float(ent[j])
                    hs = taken[r] + [hj]
                    if sum(hs) - max(hs) > self.entropy_bound:
                        open_rows.remove(r)
                        continue
                    i = int(pos[j])
                    forced = None if teacher_tokens is None else int(teacher_tokens[r, i - p])
                    tok, lp = _draw(logits[r, i], self.temperature, gens[r], forced)
                    x[r, i] = tok
                    self.log_q[r] += lp
                    taken[r].append(hj)
                    filled[r] += 1
                open_rows = [r for r in open_rows if len(taken[r]) < cap
                             and bool((x[r, p:limits[r]] == mask_id).any())]
                if open_rows and layer is not None:
                    logits, h = layer(model, h, x, attn_arg)
                    logits = _no_mask(logits, mask_id)
                    self.stats.sampler_passes += 1
                    passes[open_rows] += 1
            if callback is not None:
                masked = float((x[:, p:] == mask_id).double().mean())
                upd = callback(step, masked, {"x": x})
                if upd and "x" in upd:
                    x = upd["x"]
                    filled = [int((x[r, p:] != mask_id).sum()) for r in range(b)]
            step += 1
        self.tokens_per_forward = self.gen_length / forwards.double()
        self.row_forwards, self.row_passes = forwards, passes
        if self.eos != "none":
            apply_eos(x, p, x.shape[1], model.eos_id, self.eos, model.eos_id if self.eos == "stop" else model.pad_id)
        return x
