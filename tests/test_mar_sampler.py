"""MARSampler: shapes, per-sample determinism across batch sizes, CFG batching, schedules, step counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mgen.errors import UserError
from mgen.samplers.mar import MARSampler, mask_schedule
from test_mar_model import tiny_model as _tiny_model


def tiny_model(seed: int = 0):
    """A random tiny MAR whose head outputs stay in a sane range (small ε, variance between the bounds)."""
    m = _tiny_model(seed)
    with torch.no_grad():
        m.diffloss.net.final_layer.linear.weight.mul_(0.1)
        m.diffloss.net.final_layer.linear.bias.zero_()
    return m


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, above all on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def official_schedule(seq_len: int, num_iter: int) -> list[tuple[int, float]]:
    """(tokens predicted, mask_len) per step, with the official sample_tokens arithmetic (numpy/torch)."""
    masked = torch.tensor([[float(seq_len)]])
    out = []
    for step in range(num_iter):
        mask_ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        mask_len = torch.Tensor([np.floor(seq_len * mask_ratio)])
        mask_len = torch.maximum(torch.Tensor([1]), torch.minimum(masked - 1, mask_len))
        if step >= num_iter - 1:
            out.append((int(masked.item()), float(mask_len[0])))
            masked = torch.zeros_like(masked)
        else:
            out.append((int(masked.item() - mask_len.item()), float(mask_len[0])))
            masked = mask_len.reshape(1, 1)
    return out


@pytest.mark.parametrize("seq_len", [16, 256])
def test_mask_schedule_matches_official_for_all_step_counts(seq_len):
    for k in range(1, 65):
        ours = mask_schedule(seq_len, k)
        ref = official_schedule(seq_len, k)
        assert [(n, ml) for n, _, ml in ours] == ref, k
        assert sum(n for n, _, _ in ours) == seq_len
        assert ours[-1][1] == 0


def sample(model, labels, seed=0, **kw):
    kw.setdefault("head_steps", 4)
    kw.setdefault("num_steps", 4)
    return MARSampler(**kw).sample(model, torch.tensor(labels), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_seed_determinism():
    m = tiny_model()
    out = sample(m, [0, 1, 2])
    assert out.shape == (3, 4, 4, 4) and torch.isfinite(out).all()
    assert torch.equal(out, sample(m, [0, 1, 2]))
    assert not torch.allclose(out, sample(m, [0, 1, 2], seed=1))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_same_sample_per_index_whatever_the_batch(cfg):
    m = tiny_model()
    labels = [3, 1, 4, 1, 0]
    full = sample(m, labels, cfg=cfg)
    head = sample(m, labels[:2], cfg=cfg)
    assert torch.allclose(full[:2], head, rtol=1e-4, atol=1e-4)
    one = sample(m, labels[:1], cfg=cfg)
    assert torch.allclose(full[:1], one, rtol=1e-4, atol=1e-4)


def test_cfg_runs_both_halves_in_one_batch():
    m = tiny_model()
    seen = []
    orig = m.condition

    def spy(tokens, mask, labels, drop=None):
        seen.append((tokens.shape[0], None if drop is None else drop.tolist()))
        return orig(tokens, mask, labels, drop)

    m.condition = spy
    sample(m, [0, 1], cfg=1.0, num_steps=3)
    assert [b for b, _ in seen] == [2, 2, 2] and all(d is None for _, d in seen)
    seen.clear()
    guided = sample(m, [0, 1], cfg=4.0, num_steps=3)
    assert [b for b, _ in seen] == [4, 4, 4]
    assert all(d == [False, False, True, True] for _, d in seen)
    m.condition = orig
    plain = sample(m, [0, 1], cfg=1.0, num_steps=3)
    assert not torch.allclose(plain, guided)
    const = sample(m, [0, 1], cfg=4.0, num_steps=3, cfg_schedule="constant")
    assert not torch.allclose(const, guided)


def test_temperature_and_unconditional():
    m = tiny_model()
    a = sample(m, [2, 2], temperature=1.0)
    b = sample(m, [2, 2], temperature=0.5)
    assert not torch.allclose(a, b)
    u = MARSampler(num_steps=3, head_steps=3).sample(m, None, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert u.shape == (2, 4, 4, 4)


@pytest.mark.parametrize("steps", [1, 2, 15, 16, 17, 64])
def test_step_counts(steps):
    m = tiny_model()
    filled = []
    orig = m.diffloss.sample

    def spy(z, noise, *a, **k):
        filled.append(noise.shape[0])
        return orig(z, noise, *a, **k)

    m.diffloss.sample = spy
    out = sample(m, [0, 4], num_steps=steps, head_steps=2, cfg=2.0)
    assert torch.isfinite(out).all()
    assert sum(filled) == 2 * 16  # every token of both samples predicted exactly once
    assert len(filled) == min(steps, 16)  # steps with nothing to predict (steps > L) are skipped


def test_bad_settings():
    m = tiny_model()
    for kw in (dict(num_steps=0), dict(cfg=-1.0), dict(cfg_schedule="cosine"), dict(temperature=0.0), dict(head_steps=0)):
        with pytest.raises(UserError):
            MARSampler(**kw)
    with pytest.raises(UserError):
        sample(m, [0, 5])
    with pytest.raises(UserError):
        sample(m, [-1])
