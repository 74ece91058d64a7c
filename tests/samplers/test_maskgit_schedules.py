"""Mask schedules (MaskGIT §3.3): exact token counts per step, zero masked after the last step."""

from __future__ import annotations

import math

import pytest
import torch

from mgen.errors import UserError
from mgen.samplers.mask_schedules import SCHEDULES, mask_counts, mask_ratio, tokens_per_step


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("num_tokens", [16, 64, 256])
def test_counts_reach_zero_and_decrease(name, num_tokens):
    for steps in range(1, min(64, num_tokens) + 1):
        counts = mask_counts(name, steps, num_tokens)
        assert len(counts) == steps
        assert counts[-1] == 0
        prev = num_tokens
        for c in counts:
            assert 0 <= c < prev  # every step reveals at least one token
            prev = c
        per = tokens_per_step(name, steps, num_tokens)
        assert sum(per) == num_tokens and min(per) >= 1


def test_gamma_endpoints():
    for name in SCHEDULES:
        assert float(mask_ratio(name, 0.0)) == pytest.approx(1.0)
        assert float(mask_ratio(name, 1.0)) == pytest.approx(0.0, abs=1e-12)
        r = torch.linspace(0, 1, 33)
        g = mask_ratio(name, r)
        assert bool((g[1:] <= g[:-1] + 1e-12).all())  # non-increasing


def test_cosine_counts_follow_paper_formula():
    # n_t = floor(N cos(pi/2 (t+1)/T)), N = 256, T = 8 (MaskGIT Eq. 3, official mask_len)
    expected = [math.floor(256 * math.cos(math.pi / 2 * (t + 1) / 8) + 1e-9) for t in range(8)]
    assert mask_counts("cosine", 8, 256) == expected
    assert expected[:3] == [251, 236, 212]
    assert mask_counts("linear", 8, 256) == [224, 192, 160, 128, 96, 64, 32, 0]
    assert tokens_per_step("linear", 4, 16) == [4, 4, 4, 4]


def test_schedule_formulas():
    r = torch.tensor([0.25, 0.5])
    assert torch.allclose(mask_ratio("square", r), 1 - r.double() ** 2)
    assert torch.allclose(mask_ratio("sqrt", r), 1 - r.double().sqrt())
    assert torch.allclose(mask_ratio("arccos", r), torch.arccos(r.double()) / (math.pi / 2))


def test_bad_schedule_inputs():
    with pytest.raises(UserError, match="unknown mask schedule 'nope'.*cosine"):
        mask_counts("nope", 8, 256)
    with pytest.raises(UserError, match="at most 16 steps"):
        mask_counts("cosine", 17, 16)
    with pytest.raises(UserError, match="positive integer"):
        mask_counts("cosine", 0, 16)
