"""MaskGIT decoding: determinism, schedule counts, no re-masking, guidance, filtering, bad input."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import UserError
from mgen.models.maskgit import MaskGITTransformer
from mgen.samplers.mask_schedules import mask_counts
from mgen.samplers.maskgit import MaskGITSampler, cfg_scale_at, filter_logits


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TINY = dict(grid_size=4, hidden_dim=32, depth=2, heads=4, mlp_dim=64, codebook_size=16, mask_token_id=16, num_classes=10)


@pytest.fixture(scope="module")
def model() -> MaskGITTransformer:
    torch.manual_seed(0)
    m = MaskGITTransformer(TINY).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_sample_whatever_the_batch(model):
    s = MaskGITSampler(num_steps=6, cfg=1.5)
    labels = torch.tensor([3, 1, 4, 1, 5])
    full = s.sample(model, labels, generator=_g(7))
    again = s.sample(model, labels, generator=_g(7))
    assert torch.equal(full, again)
    first2 = s.sample(model, labels[:2], generator=_g(7))
    assert torch.equal(first2, full[:2])
    other = s.sample(model, labels, generator=_g(8))
    assert not torch.equal(other, full)
    assert full.shape == (5, 4, 4) and int(full.max()) < 16 and int(full.min()) >= 0


@pytest.mark.parametrize("schedule,steps", [("cosine", 8), ("arccos", 5), ("linear", 16), ("square", 3), ("sqrt", 1)])
def test_masked_counts_follow_schedule_and_fixed_tokens_stay(model, schedule, steps):
    s = MaskGITSampler(num_steps=steps, schedule=schedule, choice_temperature=4.5)
    codes, hist = s.sample(model, torch.tensor([0, 9, 2]), generator=_g(1), return_history=True)
    assert len(hist) == steps
    assert [int(c) for c in (hist[0] == 16).sum(dim=(1, 2))] == [mask_counts(schedule, steps, 16)[0]] * 3
    for t, h in enumerate(hist):
        assert ((h == 16).sum(dim=(1, 2)) == mask_counts(schedule, steps, 16)[t]).all()
        if t:
            prev = hist[t - 1]
            fixed = prev != 16
            assert torch.equal(h[fixed], prev[fixed])  # never re-masked, never changed
    assert torch.equal(hist[-1], codes) and not (codes == 16).any()


def test_unconditional_and_constant_cfg(model):
    s = MaskGITSampler(num_steps=4)
    u = s.sample(model, None, batch_size=2, generator=_g(3))
    assert u.shape == (2, 4, 4)
    with pytest.raises(UserError, match="batch size"):
        s.sample(model, None, generator=_g(3))
    assert cfg_scale_at(3.0, "linear", 0, 8) == 0.0 and cfg_scale_at(3.0, "linear", 7, 8) == 3.0
    assert cfg_scale_at(3.0, "constant", 0, 8) == 3.0
    a = MaskGITSampler(num_steps=4, cfg=4.0, cfg_schedule="constant").sample(model, torch.tensor([1, 2]), generator=_g(2))
    b = MaskGITSampler(num_steps=4, cfg=0.0).sample(model, torch.tensor([1, 2]), generator=_g(2))
    assert not torch.equal(a, b)


def test_top_k_one_is_greedy(model):
    # with top_k=1 and no choice noise the decode is the argmax of the model at each step
    s = MaskGITSampler(num_steps=1, top_k=1, choice_temperature=0.0)
    labels = torch.tensor([4, 6])
    codes = s.sample(model, labels, generator=_g(0))
    with torch.no_grad():
        logits = model(torch.full((2, 16), 16), labels, torch.zeros(2, dtype=torch.bool))
    assert torch.equal(codes.view(2, -1), logits.argmax(-1))


def test_filter_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = filter_logits(logits, top_p=0.7)  # 0.5 + 0.3 reach 0.7
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p = filter_logits(logits, top_p=0.4)  # the top code always survives
    assert torch.isfinite(p[0, 0]) and torch.isinf(p[0, 1:]).all()


def test_bad_sampler_settings(model):
    with pytest.raises(UserError, match="unknown mask schedule"):
        MaskGITSampler(schedule="cubic")
    with pytest.raises(UserError, match="cfg schedule"):
        MaskGITSampler(cfg_schedule="exp")
    with pytest.raises(UserError, match="temperature"):
        MaskGITSampler(temperature=0)
    with pytest.raises(UserError, match="top_p"):
        MaskGITSampler(top_p=1.5)
    with pytest.raises(UserError, match="unknown MaskGIT sampler settings"):
        MaskGITSampler.from_mapping({"stepz": 3})
    with pytest.raises(UserError, match=r"labels must lie in \[0, 9\]"):
        MaskGITSampler(num_steps=2).sample(model, torch.tensor([10]), generator=_g())
    with pytest.raises(UserError, match="at most 16 steps"):
        MaskGITSampler(num_steps=17).sample(model, torch.tensor([1]), generator=_g())


def test_training_loss_learns(model):
    """A few shared-trainer steps on a fixed code set lower the masked cross-entropy."""
    from mgen.models.maskgit import MaskGITTask
    from mgen.train.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    m = MaskGITTransformer({**TINY, "dropout": 0.0})
    codes = torch.randint(0, 4, (8, 4, 4))  # a low-entropy code distribution
    labels = torch.arange(8) % 10
    task = MaskGITTask(m)
    g = torch.Generator().manual_seed(0)
    before = float(task.loss(m, (codes, labels), g).detach())
    cfg = TrainConfig(max_steps=40, batch_size=8, lr=3e-3, progress=False, checkpoint_every=10_000, log_every=1000,
                      out_dir="/tmp/mgen-maskgit-test-unused")
    tr = Trainer(task, (codes, labels), cfg)
    tr.out_dir = __import__("pathlib").Path(__import__("tempfile").mkdtemp())
    tr.train(resume=False)
    after = float(task.loss(m, (codes, labels), torch.Generator().manual_seed(0)).detach())
    assert after < before - 0.5
