"""Mask schedules γ(r) shared by the discrete masked decoders (MaskGIT, ENAT).

MaskGIT (Chang et al., CVPR 2022, §3.3 "Masking design" and Eq. 3 / Alg. of §3.2): a mask scheduling
function γ: [0, 1] → [0, 1], decreasing with γ(0) = 1 and γ(1) = 0, gives the fraction of tokens that
are still masked. At training time the mask ratio is γ(r) with r ~ U(0, 1); at decoding step t of T
(0-based) the number of tokens left masked afterwards is ⌊N·γ((t + 1)/T)⌋ (the official JAX code's
``mask_len``). The paper compares cosine (its default), square, sqrt/"root", linear and the concave
arccos that valeoai/Maskgit-pytorch defaults to; all five are offered here.

:func:`mask_counts` turns a schedule into exact integer counts per step with two guarantees the raw
formula lacks: every step decodes at least one token (counts strictly decrease) and the last step
leaves exactly zero tokens masked, for any step count from 1 to N.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from mgen.errors import UserError


def _cosine(r: torch.Tensor) -> torch.Tensor:
    return torch.cos(r * (math.pi / 2))


def _arccos(r: torch.Tensor) -> torch.Tensor:
    return torch.arccos(r.clamp(-1.0, 1.0)) / (math.pi / 2)


def _linear(r: torch.Tensor) -> torch.Tensor:
    return 1.0 - r


def _square(r: torch.Tensor) -> torch.Tensor:
    return 1.0 - r**2


def _sqrt(r: torch.Tensor) -> torch.Tensor:
    return 1.0 - r.clamp(min=0.0).sqrt()


#: name -> γ(r): fraction of tokens still masked at progress r ∈ [0, 1] (MaskGIT §3.3, Fig. 8).
SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cosine": _cosine,
    "arccos": _arccos,
    "linear": _linear,
    "square": _square,
    "sqrt": _sqrt,
}


#: other names accepted for a schedule: valeoai/Maskgit-pytorch calls 1 − √r "root".
ALIASES: dict[str, str] = {"root": "sqrt"}


def check_schedule(name: str) -> str:
    """Validate a schedule name and return its canonical name (UserError listing the known ones otherwise)."""
    name = ALIASES.get(name, name)
    if name not in SCHEDULES:
        raise UserError(f"unknown mask schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return name


def mask_ratio(name: str, r: torch.Tensor | float) -> torch.Tensor:
    """γ(r) for schedule ``name``; ``r`` is a float or a tensor of progress values in [0, 1]."""
    fn = SCHEDULES[check_schedule(name)]
    r = torch.as_tensor(r, dtype=torch.float64)
    return fn(r).clamp(0.0, 1.0)


def mask_counts(name: str, num_steps: int, num_tokens: int) -> list[int]:
    """Number of tokens still masked *after* each of ``num_steps`` decoding steps.

    Starts from ``num_tokens`` masked. Step t keeps ⌊N·γ((t + 1)/T)⌋ masked (MaskGIT Eq. 3 with the
    official ``mask_len``), clamped so that every step reveals at least one token and enough tokens
    remain for the steps still to come; the last entry is always 0.
    """
    name = check_schedule(name)
    _check_steps(num_steps, num_tokens)
    progress = torch.arange(1, num_steps + 1, dtype=torch.float64) / num_steps
    raw = torch.floor(num_tokens * mask_ratio(name, progress) + 1e-9).long().tolist()
    counts: list[int] = []
    prev = num_tokens
    for t, m in enumerate(raw):
        remaining_steps = num_steps - 1 - t
        m = min(m, prev - 1)  # reveal at least one token at this step
        m = max(m, remaining_steps)  # leave at least one token for each later step
        counts.append(m)
        prev = m
    assert counts[-1] == 0
    return counts


def _check_steps(num_steps: int, num_tokens: int | None) -> None:
    """A positive integer step count, and (unless ``num_tokens`` is None) no more steps than tokens."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise UserError(f"number of decoding steps must be a positive integer, got {num_steps!r}")
    if num_tokens is not None and num_steps > num_tokens:
        raise UserError(f"{num_steps} decoding steps for only {num_tokens} tokens: use at most {num_tokens} steps")


def floor_mask_counts(name: str, num_steps: int, num_tokens: int) -> list[int]:
    """⌊N·γ((t+1)/T)⌋ tokens still masked after step t, with no clamping: the rule of ENAT's official
    sampler (LeapLabTHU/ENAT ``libs/nat_misc.py: NATSchedule.generate``, ``math.floor(seq_len * mask_ratio)``).
    A step may reveal no token when T is large for N (T > N is allowed); γ(1) = 0, so the last entry is
    always 0. The cosine value is computed in float64 exactly as the official ``np.cos(ratio·π·0.5)``."""
    name = check_schedule(name)
    _check_steps(num_steps, None)  # T > N is allowed here
    counts = []
    for t in range(num_steps):
        ratio = 1.0 * (t + 1) / num_steps
        g = math.cos(ratio * math.pi * 0.5) if name == "cosine" else float(mask_ratio(name, ratio))
        counts.append(max(0, math.floor(num_tokens * g)))
    counts[-1] = 0  # γ(1) = 0 (cos(π/2) = 6e-17 floors to 0 for any realistic N)
    return counts


def valeoai_mask_counts(name: str, num_steps: int, num_tokens: int) -> list[int]:
    """Tokens still masked after each step under valeoai/Maskgit-pytorch's rounding (v1
    ``Trainer/vit.py: MaskGIT.adap_sche``), the rule its ImageNet checkpoints were evaluated with.

    There the schedule gives per-step *weights* w_t = γ(r_t) at r = linspace(1, 0, T) (float32); step t
    reveals round(N·w_t / Σw) tokens, at least 1, and the last step whatever is left (so the total is N).
    Reveals are clamped to the tokens still masked, as the official loop does; when everything is revealed
    before step T the remaining entries are 0 (the official loop stops there). T = 1 reveals all N
    (the official formula divides by zero). Unlike :func:`mask_counts`, the counts do not follow γ((t+1)/T):
    with cosine the *number revealed per step* grows like 1 − cos, which masks fewer tokens early.
    """
    name = check_schedule(name)
    _check_steps(num_steps, num_tokens)
    if num_steps == 1:
        return [0]
    r = torch.linspace(1, 0, num_steps)  # float32, as the official code
    w = SCHEDULES[name](r)
    sche = ((w / w.sum()) * num_tokens).round()
    sche[sche == 0] = 1
    sche[-1] += num_tokens - sche.sum()
    left, counts = num_tokens, []
    for k in sche.int().tolist():
        left -= min(max(k, 0), left)
        counts.append(left)
    counts[-1] = 0
    return counts


def tokens_per_step(name: str, num_steps: int, num_tokens: int) -> list[int]:
    """How many tokens each step reveals (sums to ``num_tokens``; every entry ≥ 1)."""
    counts = mask_counts(name, num_steps, num_tokens)
    prev = [num_tokens] + counts[:-1]
    return [p - c for p, c in zip(prev, counts)]
