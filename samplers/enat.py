"""ENAT decoding (Ni et al., NeurIPS 2024; official ``libs/nat_misc.py: NATSchedule.generate``).

MaskGIT-style iterative decoding (:mod:`mgen.samplers.maskgit`) with ENAT's settings and its temporal
feature reuse:

* step t = 0 … T−1, progress r = (t+1)/T; tokens left masked after the step: ⌊N·cos(πr/2)⌋ with no
  clamping, exactly as the official loop (:func:`mgen.samplers.mask_schedules.floor_mask_counts`; unlike
  MaskGIT's :func:`~mgen.samplers.mask_schedules.mask_counts`, a step may reveal nothing when T is large
  for N, and T > N is allowed);
* guidance l = l_c + w_t·(l_c − l_u) with w_t = cfg·t/T (0 at the first step, as the official loop
  updates the scale after each step);
* codes are drawn from log_softmax(l) / τ_t with the annealed sampling temperature
  τ_t = max(samp_temp·(1 − r), 10⁻³);
* confidence = log p(code) under the guided distribution + mask_temp·(1 − r)·Gumbel (drawn every step,
  as the official loop does, even when its weight is 0); visible tokens get +∞ and are never re-masked;
* each evaluation returns an :class:`mgen.models.enat.ENATState` which the next step passes back, so
  only the newly decoded (critical) tokens are encoded (``reuse=False`` recomputes everything — the
  spatially disentangled model without temporal reuse, for ablations and benchmarks). The
  conditional and unconditional branches keep their own states.

Official ImageNet-256 ENAT-L settings: 8 steps, cfg 2.5, mask_temp 1.5, samp_temp 6.

Precision and progress as in :mod:`mgen.samplers.maskgit`: guidance, log-softmax, Gumbel noise and
confidence in float32; ``callback(step, timestep, {"tokens", "mask"})`` after each of the
:attr:`ENATSampler.total_steps` steps (a callback that masks a token again makes the next step recompute
instead of reusing features, since reuse needs the visible set to grow).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators
from mgen.samplers.mask_schedules import check_schedule, floor_mask_counts
from mgen.samplers.maskgit import (StepCallback, filter_logits, gumbel_like, sample_codes, select_masked,
                                   step_callback, validate_labels)


@dataclass
class ENATSampler:
    """ENAT decoding hyper-parameters (defaults: the official ImageNet-256 ENAT-L evaluation)."""

    num_steps: int = 8
    schedule: str = "cosine"
    cfg: float = 2.5
    mask_temp: float = 1.5
    samp_temp: float = 6.0
    top_k: int | None = None
    top_p: float | None = None
    reuse: bool = True

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> "ENATSampler":
        known = {f.name for f in dataclasses.fields(cls)}
        merged = {**dict(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
        unknown = set(merged) - known
        if unknown:
            raise UserError(f"unknown ENAT sampler settings {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**merged)

    def validate(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise UserError(f"steps must be a positive integer, got {self.num_steps!r}")
        check_schedule(self.schedule)
        if self.cfg < 0:
            raise UserError(f"cfg scale must be >= 0, got {self.cfg}")
        if self.mask_temp < 0 or not self.samp_temp > 0:
            raise UserError(f"mask_temp must be >= 0 and samp_temp > 0 (got {self.mask_temp}, {self.samp_temp})")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise UserError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def total_steps(self) -> int:
        """How many times :meth:`sample` calls its ``callback`` (one per decoding step)."""
        return int(self.num_steps)

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, class_labels: torch.Tensor | None = None, *,
               batch_size: int | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
               return_history: bool = False,
               callback: StepCallback | None = None) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode a batch of code grids (B, h, w) for ``class_labels`` (None = unconditional). ``callback``:
        :func:`mgen.samplers.maskgit.step_callback`, after each of the :attr:`total_steps` steps."""
        self.validate()
        device = next(model.parameters()).device
        if class_labels is None:
            if batch_size is None:
                raise UserError("pass class labels or a batch size")
            b = int(batch_size)
        else:
            class_labels = torch.as_tensor(class_labels, dtype=torch.long, device=device)
            validate_labels(class_labels, None, model.num_classes)
            b = class_labels.shape[0]
        h, w = model.grid_size
        n = h * w
        counts = floor_mask_counts(self.schedule, self.num_steps, n)
        gens = per_sample_generators(generator, b, device)
        mask_id = model.mask_token_id
        ids = torch.full((b, n), mask_id, dtype=torch.long, device=device)
        guided = class_labels is not None and self.cfg > 0
        state = None  # cond (and uncond) states stacked along the batch
        history = []
        for t in range(self.num_steps):
            r = (t + 1) / self.num_steps
            w_t = self.cfg * t / self.num_steps
            prev = state if self.reuse else None
            if guided:
                drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(device)
                out, state = model(torch.cat([ids, ids]), torch.cat([class_labels, class_labels]), drop,
                                   prev=prev, return_state=True)
                cond, uncond = out[:b].float(), out[b:].float()
                logits = cond + w_t * (cond - uncond)
            else:
                out, state = model(ids, class_labels, None, prev=prev, return_state=True)
                logits = out.float()
            logp = logits.log_softmax(dim=-1)
            tau = max(self.samp_temp * (1.0 - r), 1e-3)
            masked = ids == mask_id
            drawn = sample_codes(filter_logits(logp / tau, self.top_k, self.top_p), gens)
            drawn = torch.where(masked, drawn, ids)
            conf = logp.gather(-1, drawn[..., None]).squeeze(-1)
            anneal = self.mask_temp * (1.0 - r)
            conf = conf + anneal * gumbel_like((n,), gens, device)  # official: drawn even when anneal = 0
            conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
            remask = select_masked(conf, counts[t])
            ids = torch.where(remask, torch.full_like(drawn, mask_id), drawn)
            if callback is not None:
                ids, _ = step_callback(callback, t, counts[t] / n, ids, remask, (h, w), mask_id)
                if bool(((ids == mask_id) & ~state.masking[:b]).any()):  # a token was masked again: no reuse
                    state = None
            if return_history:
                history.append(ids.view(b, h, w).clone())
        out_codes = ids.view(b, h, w)
        return (out_codes, history) if return_history else out_codes
