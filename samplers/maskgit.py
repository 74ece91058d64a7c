"""MaskGIT iterative parallel decoding (Chang et al., CVPR 2022, §3.2 "Iterative Decoding", Alg. 1).

Start from all ``h·w`` tokens masked. At step t = 0 … T−1:

1. *Predict*: evaluate the generator on the partially masked grid (twice with classifier-free guidance:
   ``l = l_c + w_t·(l_c − l_u)``, ``w_t`` constant or growing linearly from 0 to ``cfg`` as in
   valeoai/Maskgit-pytorch ``Trainer/vit.py`` — ``w·t/(T−1)``).
2. *Sample*: draw a code for every masked position from softmax(l / temperature), optionally restricted
   to the top-k codes / the top-p nucleus.
3. *Mask schedule*: the number of tokens that stay masked is n_t = ⌊N·γ((t+1)/T)⌋
   (:func:`mgen.samplers.mask_schedules.mask_counts`, cosine by default).
4. *Mask*: confidence = log p(sampled code) + choice_temperature·(1 − (t+1)/T)·Gumbel (the official
   JAX code's annealed "choice temperature", 4.5 in the paper); tokens fixed at earlier steps have
   confidence +∞, so they are never re-masked; the n_t least confident new tokens are masked again.

Every random number comes from one generator per sample (:func:`mgen.samplers.per_sample_generators`),
so a sample depends on its seed and index only, not on the batch size.

Precision: the logits are taken as float32 (the generators' heads already return float32 when their
weights are bfloat16/float16), and the guidance mixing, the tempered (log-)softmax, the Gumbel noise and
the confidence ranking all run in float32; the codes returned are ``torch.long`` as always.

Progress: ``sample(..., callback=fn)`` calls ``fn(step, timestep, {"tokens": codes, "mask": mask})`` once
after each of the :attr:`MaskGITSampler.total_steps` steps (:func:`step_callback`); the sampler shows no
progress bar of its own (pipelines own it).

``reference="valeoai"`` reproduces valeoai/Maskgit-pytorch v1 ``Trainer/vit.py: MaskGIT.sample`` (the code
its ``MaskGIT_ImageNet_256.pth`` was evaluated with, README: arccos, 8 steps, Gumbel temp 4.5, cfg 3), which
differs from the paper / JAX rule above in four places; the ``maskgit`` config selects it:

* counts: step t reveals round(N·γ(r_t)/Σγ) tokens, r = linspace(1, 0, T)
  (:func:`mgen.samplers.mask_schedules.valeoai_mask_counts`);
* noise annealing: choice_temperature·(1 − t/(T−1)) (zero at the last step), not (1 − (t+1)/T);
* confidence: log of the *tempered* probability of the drawn code (softmax(l / temperature); valeoai's
  ``sm_temp`` multiplies the logits, so ``temperature = 1 / sm_temp``);
* the softmax also covers the model's [MASK] output column (the official head keeps codebook_size + 1
  columns); a drawn [MASK] id is kept like any code and clamped to codebook_size − 1 at the end, as the
  official sampler does before decoding. Guidance: (1 + w_t)·l_c − w_t·l_u with w_t = w·t/(T−1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators
from mgen.samplers.mask_schedules import check_schedule, mask_counts, valeoai_mask_counts

CFG_SCHEDULES = ("linear", "constant")
REFERENCES = ("jax", "valeoai")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Top-k and nucleus (top-p, Holtzman et al. 2020) filtering over the last dim: excluded codes get −∞.
    The most likely code always survives."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly above each code
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel_like(shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise of ``(B, *shape)``; row b is drawn from ``generators[b]`` only."""
    rows = []
    for g in generators:
        u = torch.rand(shape, generator=g, device=g.device, dtype=torch.float32).to(device)
        rows.append(-torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7))))
    return torch.stack(rows)


def sample_codes(logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One categorical draw per position (Gumbel-max over filtered logits (B, N, V))."""
    g = gumbel_like(tuple(logits.shape[1:]), generators, logits.device)
    return (logits.float() + g).argmax(dim=-1)


def select_masked(confidence: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Boolean (B, N): the ``num_masked`` lowest-confidence positions of each row (stable ties)."""
    b, n = confidence.shape
    order = confidence.argsort(dim=-1, stable=True)
    mask = torch.zeros(b, n, dtype=torch.bool, device=confidence.device)
    if num_masked > 0:
        mask.scatter_(1, order[:, :num_masked], True)
    return mask


def cfg_scale_at(cfg: float, schedule: str, step: int, num_steps: int) -> float:
    """Guidance weight of step ``step`` (valeoai ``Trainer/vit.py``: w·t/(T−1) for "linear"; T = 1 → w)."""
    if schedule == "constant" or num_steps == 1:
        return float(cfg)
    return float(cfg) * step / (num_steps - 1)


#: ``callback(step, timestep, state) -> dict | None`` (docs/ARCHITECTURE.md, "Samplers")
StepCallback = Callable[[int, float, dict[str, torch.Tensor]], Optional[dict[str, torch.Tensor]]]


def step_callback(callback: StepCallback | None, step: int, timestep: float, codes: torch.Tensor,
                  masked: torch.Tensor, grid: tuple[int, int], mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Call ``callback(step, timestep, {"tokens": (B, h, w) long, "mask": (B, h, w) bool})`` after a step of a
    masked decoder and apply what it returns (diffusers' ``callback_on_step_end`` semantics): the tensors it
    names replace the sampler's state, other names are ignored. Positions whose mask is True hold
    ``mask_id`` afterwards (a token written at a masked position is only kept if the mask is cleared too).
    ``timestep``: the fraction of tokens still masked after the step (1 → 0, the masked decoder's noise level).
    Returns the (B, h·w) codes and mask to continue with."""
    if callback is None:
        return codes, masked
    b, n = codes.shape
    h, w = grid
    out = callback(step, float(timestep), {"tokens": codes.view(b, h, w), "mask": masked.view(b, h, w)})
    if not out:
        return codes, masked
    if "tokens" in out:
        codes = torch.as_tensor(out["tokens"]).to(device=codes.device, dtype=torch.long).reshape(b, n)
    if "mask" in out:
        masked = torch.as_tensor(out["mask"]).to(device=masked.device, dtype=torch.bool).reshape(b, n)
    return torch.where(masked, torch.full_like(codes, mask_id), codes), masked


def validate_labels(labels: torch.Tensor | None, batch_size: int | None, num_classes: int) -> None:
    if labels is None:
        return
    if labels.dim() != 1:
        raise UserError(f"class labels must be a 1-D tensor, got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise UserError(f"class labels must lie in [0, {num_classes - 1}], got {labels.tolist()[:8]}")


@dataclass
class MaskGITSampler:
    """MaskGIT decoding hyper-parameters; defaults are the paper's (8 steps, cosine, choice temp 4.5)."""

    num_steps: int = 8
    schedule: str = "cosine"
    choice_temperature: float = 4.5
    temperature: float = 1.0
    cfg: float = 0.0
    cfg_schedule: str = "linear"
    top_k: int | None = None
    top_p: float | None = None
    reference: str = "jax"  # "jax" (paper / official JAX code) or "valeoai" (valeoai v1 PyTorch sampler)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> "MaskGITSampler":
        """From a config's ``sampler:`` section (unknown keys are an error) plus non-None overrides."""
        known = {f.name for f in dataclasses.fields(cls)}
        merged = {**dict(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
        unknown = set(merged) - known
        if unknown:
            raise UserError(f"unknown MaskGIT sampler settings {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**merged)

    def validate(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise UserError(f"steps must be a positive integer, got {self.num_steps!r}")
        check_schedule(self.schedule)
        if self.reference not in REFERENCES:
            raise UserError(f"unknown MaskGIT reference {self.reference!r}; choose one of {', '.join(REFERENCES)}")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise UserError(f"unknown cfg schedule {self.cfg_schedule!r}; choose one of {', '.join(CFG_SCHEDULES)}")
        if not self.temperature > 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if self.choice_temperature < 0:
            raise UserError(f"choice temperature must be >= 0, got {self.choice_temperature}")
        if self.cfg < 0:
            raise UserError(f"cfg scale must be >= 0, got {self.cfg}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise UserError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")

    def guided_logits(self, model: Callable[..., torch.Tensor], codes: torch.Tensor, labels: torch.Tensor | None,
                      step: int) -> torch.Tensor:
        """One (or, with guidance, one doubled-batch) evaluation → guided logits (B, N, V)."""
        b = codes.shape[0]
        w = cfg_scale_at(self.cfg, self.cfg_schedule, step, self.num_steps) if labels is not None else 0.0
        if labels is None:
            return model(codes, None, None).float()
        if self.cfg == 0:
            return model(codes, labels, torch.zeros(b, dtype=torch.bool, device=codes.device)).float()
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(codes.device)
        both = model(torch.cat([codes, codes]), torch.cat([labels, labels]), drop).float()
        cond, uncond = both[:b], both[b:]
        if self.reference == "valeoai":
            return (1 + w) * cond - w * uncond  # valeoai Trainer/vit.py, same value up to rounding
        return cond + w * (cond - uncond)

    def mask_counts(self, num_tokens: int) -> list[int]:
        """Tokens still masked after each step for ``num_tokens`` tokens under this sampler's rule."""
        if self.reference == "valeoai":
            return valeoai_mask_counts(self.schedule, self.num_steps, num_tokens)
        return mask_counts(self.schedule, self.num_steps, num_tokens)

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def total_steps(self) -> int:
        """How many times :meth:`sample` calls its ``callback`` (one per decoding step)."""
        return int(self.num_steps)

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, class_labels: torch.Tensor | None = None, *,
               batch_size: int | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
               return_history: bool = False, hooks: Any = None,
               callback: StepCallback | None = None) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode a batch: ``class_labels`` (B,) (None = unconditional, then ``batch_size`` is needed).

        Returns codes (B, h, w); with ``return_history`` also the list of per-step code grids
        (masked positions hold the mask id). ``generator``: one generator (per-sample streams are derived
        from it) or a list of B generators (used as given). ``callback``: see :func:`step_callback`; it is
        called after every one of the :attr:`total_steps` steps.

        ``hooks`` (optional; used by :class:`mgen.samplers.recap.ReCAP`) may replace two things per step t:
        ``hooks.logits(sampler, model, codes, class_labels, t)`` → guided logits (B, N, V) instead of
        :meth:`guided_logits`, and ``hooks.confidence(t, conf, masked)`` → the confidence (B, N) whose
        ``counts[t]`` lowest entries stay masked. With ``hooks=None`` decoding is exactly Alg. 1."""
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
        counts = self.mask_counts(n)
        gens = per_sample_generators(generator, b, device)
        mask_id = model.mask_token_id
        valeoai = self.reference == "valeoai"
        # valeoai: the softmax also covers the [MASK] output column (MaskGITTransformer(mask_logit=True)).
        net = model
        if valeoai and hooks is None and getattr(model, "has_mask_logit", False):
            def net(c, l, d):  # noqa: E306
                return model(c, l, d, mask_logit=True)
        codes = torch.full((b, n), mask_id, dtype=torch.long, device=device)
        masked = torch.ones(b, n, dtype=torch.bool, device=device)
        history = []
        for t in range(self.num_steps):
            if valeoai and not bool(masked.any()):  # the official loop stops once everything is decoded
                codes, masked = step_callback(callback, t, counts[t] / n, codes, masked, (h, w), mask_id)
                if return_history:
                    history.append(codes.view(b, h, w).clone())
                continue
            if hooks is None:
                logits = self.guided_logits(net, codes, class_labels, t)
            else:
                logits = hooks.logits(self, model, codes, class_labels, t)
            if valeoai:
                tempered = logits / self.temperature
                logp = tempered.log_softmax(dim=-1)
                drawn = sample_codes(filter_logits(tempered, self.top_k, self.top_p), gens)
                progress = t / (self.num_steps - 1) if self.num_steps > 1 else 1.0
            else:
                logp = logits.log_softmax(dim=-1)
                drawn = sample_codes(filter_logits(logits / self.temperature, self.top_k, self.top_p), gens)
                progress = (t + 1) / self.num_steps
            drawn = torch.where(masked, drawn, codes)
            conf = logp.gather(-1, drawn[..., None]).squeeze(-1)
            anneal = self.choice_temperature * (1.0 - progress)
            if anneal > 0 or valeoai:  # valeoai draws the noise every step, even when its weight is 0
                conf = conf + anneal * gumbel_like((n,), gens, device)
            conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
            if hooks is not None:
                conf = hooks.confidence(t, conf, masked)
            remask = select_masked(conf, counts[t])
            masked = remask
            codes = torch.where(remask, torch.full_like(drawn, mask_id), drawn)
            codes, masked = step_callback(callback, t, counts[t] / n, codes, masked, (h, w), mask_id)
            if return_history:
                history.append(codes.view(b, h, w).clone())
        out = codes.clamp(max=model.codebook_size - 1) if valeoai else codes
        out = out.view(b, h, w)
        return (out, history) if return_history else out
