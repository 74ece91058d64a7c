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


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


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

    def spy(tokens, mask, labels, drop=None, **kw):
        seen.append((tokens.shape[0], None if drop is None else drop.tolist()))
        return orig(tokens, mask, labels, drop, **kw)

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


class _Recording(MARSampler):
    """Keeps the orders and head noise it drew, to replay them through the reference loop below."""

    def orders(self, gens, seq_len, device):
        self.rec_orders, self.rec_noise = super().orders(gens, seq_len, device), []
        return self.rec_orders

    def head_noise(self, gens, n, channels, steps, device):
        out = super().head_noise(gens, n, channels, steps, device)
        self.rec_noise.append(out)
        return out


def reference_loop(m, labels, orders, noise, num_iter, cfg, schedule, temperature, head_steps):
    """MAR sampling written out from the paper's equations (§3.3-3.4; IDDPM eqs. 11-15 for the head) on
    ``m.condition`` / ``m.denoise``, with the generation orders and head noise given. Orders: the first
    ``mask_len`` entries stay masked after a step. Head: respaced cosine diffusion, learned-range variance,
    ε̂ = ε_u + s·(ε_c − ε_u) with the conditional variance, x ← μ + τ·σ·n except at the last step."""
    b, L, C = len(labels), m.seq_len, m.token_embed_dim
    abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  (IDDPM eq. 17)
    ac_full = np.cumprod(1 - np.array([min(1 - abar((i + 1) / 1000) / abar(i / 1000), 0.999) for i in range(1000)]))
    stride = 999 / (head_steps - 1) if head_steps > 1 else 1
    keep = sorted({round(k * stride) for k in range(head_steps)})
    ac = ac_full[keep]
    beta = 1 - ac / np.append(1.0, ac[:-1])
    ac_prev = np.append(1.0, ac[:-1])
    post_var = beta * (1 - ac_prev) / (1 - ac)
    post_lv = np.log(np.append(post_var[1], post_var[1:]))
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    k_x, k_eps = f32(np.sqrt(1 / ac)), f32(np.sqrt(1 / ac - 1))
    c1, c2 = f32(beta * np.sqrt(ac_prev) / (1 - ac)), f32((1 - ac_prev) * np.sqrt(1 - beta) / (1 - ac))
    lb, lp = f32(np.log(beta)), f32(post_lv)
    mask = torch.ones(b, L, dtype=torch.bool)
    tokens = torch.zeros(b, L, C)
    labels = torch.as_tensor(labels)
    calls = iter(noise)
    for step in range(num_iter):
        mask_len = torch.tensor([math.floor(L * math.cos(math.pi / 2 * (step + 1) / num_iter))], dtype=torch.float32)
        mask_len = torch.clamp(torch.minimum(mask.sum(1)[:1].float() - 1, mask_len), min=1)
        nxt = torch.zeros(b, L, dtype=torch.bool).scatter(1, orders[:, :int(mask_len)], True)
        pred = mask if step == num_iter - 1 else mask ^ nxt
        if pred.sum() == 0:
            mask = nxt
            continue
        zc = m.condition(tokens, mask, labels)[pred]
        zu = m.condition(tokens, mask, None)[pred]
        s = (1 + (cfg - 1) * (L - mask_len) / L) if schedule == "linear" else cfg
        x, per_step = next(calls)
        n = x.shape[0]
        for i in reversed(range(len(keep))):
            t = torch.full((2 * n,), keep[i], dtype=torch.long)
            out = m.denoise(torch.cat([x, x]), t, torch.cat([zc, zu]))
            eps = out[n:, :C] + s * (out[:n, :C] - out[n:, :C])
            frac = (out[:n, C:] + 1) / 2
            mean = c1[i] * (k_x[i] * x - k_eps[i] * eps) + c2[i] * x
            x = mean if i == 0 else mean + torch.exp(0.5 * (frac * lb[i] + (1 - frac) * lp[i])) * per_step[i] * temperature
        tokens[pred] = x
        mask = nxt
    return m.unpatchify(tokens)


@pytest.mark.parametrize("num_steps, cfg, schedule, temperature", [
    (1, 2.9, "linear", 1.0), (4, 2.9, "linear", 1.0), (5, 3.0, "constant", 0.7), (16, 1.5, "linear", 1.2)])
def test_sampler_equals_reference_loop_with_the_same_draws(num_steps, cfg, schedule, temperature):
    """With the same orders and head noise, MARSampler computes the paper's loop (guided, both schedules,
    temperature); checked against an official run on mar-b (see benchmarks/mar_vs_official) to 0 difference."""
    m = tiny_model()
    s = _Recording(num_steps=num_steps, cfg=cfg, cfg_schedule=schedule, temperature=temperature, head_steps=7)
    with torch.no_grad():
        out = s.sample(m, torch.tensor([1, 3]), generator=torch.Generator().manual_seed(4))
        ref = reference_loop(m, [1, 3], s.rec_orders, s.rec_noise, num_steps, cfg, schedule, temperature, 7)
    assert out.shape == (2, 4, 4, 4)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_sampling_follows_the_model_dtype():
    m = tiny_model().double()
    out = MARSampler(num_steps=3, cfg=2.0, head_steps=3).sample(m, [0, 1], generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
