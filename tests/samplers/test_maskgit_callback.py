"""The sampler contract for MaskGIT, ENAT and ReCAP: ``callback(step, timestep, state)`` once after every one of
``total_steps`` steps, returned tensors replace the state, and randomness only through the given generators."""

from __future__ import annotations

import pytest
import torch

from mgen.models.enat import ENAT
from mgen.models.maskgit import MaskGITTransformer
from mgen.samplers.enat import ENATSampler
from mgen.samplers.mask_schedules import floor_mask_counts, mask_counts
from mgen.samplers.maskgit import MaskGITSampler
from mgen.samplers.recap import ReCAP

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

MG = dict(grid_size=4, hidden_dim=32, depth=2, heads=4, mlp_dim=64, codebook_size=16, mask_token_id=16, num_classes=10)
EN = dict(grid_size=4, hidden_dim=32, enc_depth=2, dec_depth=1, heads=4, codebook_size=16, num_classes=10)


@pytest.fixture(scope="module")
def mg() -> MaskGITTransformer:
    torch.manual_seed(0)
    m = MaskGITTransformer(**MG).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def en() -> ENAT:
    torch.manual_seed(0)
    m = ENAT(**EN).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Recorder:
    def __init__(self, edit=None):
        self.calls: list[tuple[int, float, dict[str, torch.Tensor]]] = []
        self.edit = edit

    def __call__(self, step, timestep, state):
        assert set(state) == {"tokens", "mask"}
        self.calls.append((step, timestep, {k: v.clone() for k, v in state.items()}))
        return self.edit(step, state) if self.edit else None


@pytest.mark.parametrize("which", ["jax", "valeoai", "enat", "recap"])
def test_called_once_per_step_with_the_state(mg, en, which):
    if which == "enat":
        sampler, model, counts = ENATSampler(num_steps=6, cfg=1.0, samp_temp=1.0), en, floor_mask_counts("cosine", 6, 16)
    elif which == "recap":
        sampler, model, counts = ReCAP(MaskGITSampler(num_steps=6, cfg=1.0), 1, 1), mg, mask_counts("cosine", 6, 16)
    else:
        sampler = MaskGITSampler(num_steps=6, cfg=2.0, reference=which)
        model, counts = mg, sampler.mask_counts(16)
    labels = torch.tensor([2, 5])
    rec = Recorder()
    out = sampler.sample(model, labels, generator=_g(1), callback=rec)
    assert sampler.total_steps == 6 and [c[0] for c in rec.calls] == list(range(6))
    assert [c[1] for c in rec.calls] == [k / 16 for k in counts]  # fraction still masked: 1 → 0
    for _, _, state in rec.calls:
        assert state["tokens"].shape == (2, 4, 4) and state["tokens"].dtype == torch.long
        assert state["mask"].shape == (2, 4, 4) and state["mask"].dtype == torch.bool
        assert torch.equal(state["tokens"][state["mask"]], torch.full_like(state["tokens"][state["mask"]], 16))
    assert torch.equal(rec.calls[-1][2]["tokens"], out)
    assert torch.equal(sampler.sample(model, labels, generator=_g(1)), out)  # observing changes nothing


@pytest.mark.parametrize("which", ["maskgit", "enat"])
def test_returned_tensors_replace_the_state(mg, en, which):
    sampler = MaskGITSampler(num_steps=5, cfg=1.0) if which == "maskgit" else ENATSampler(num_steps=5, cfg=1.0, samp_temp=1.0)
    model = mg if which == "maskgit" else en
    labels = torch.tensor([1, 8])

    def force(step, state):  # after step 1, whatever was decoded becomes code 7
        if step != 1:
            return None
        tokens = torch.where(state["mask"], state["tokens"], torch.full_like(state["tokens"], 7))
        return {"tokens": tokens}

    rec = Recorder(force)
    out = sampler.sample(model, labels, generator=_g(2), callback=rec)
    fixed = ~rec.calls[1][2]["mask"]
    assert fixed.any() and bool((out[fixed] == 7).all())
    base = sampler.sample(model, labels, generator=_g(2))
    assert not torch.equal(out, base)


def test_enat_callback_that_masks_again_recomputes(en):
    s = ENATSampler(num_steps=4, cfg=1.0, samp_temp=1.0)

    def remask_all(step, timestep, state):  # after step 1 every token is masked again: no features can be reused
        return {"mask": torch.ones_like(state["mask"])} if step == 1 else None

    out = s.sample(en, torch.tensor([3, 3]), generator=_g(0), callback=remask_all)
    assert out.shape == (2, 4, 4) and not (out == 16).any()


def test_randomness_only_through_the_generators(mg, en):
    """Consuming the global RNG between calls changes nothing; per-sample generator lists are used as given."""
    for sampler, model in ((MaskGITSampler(num_steps=4, cfg=1.0), mg), (ENATSampler(num_steps=4), en),
                           (ReCAP(MaskGITSampler(num_steps=4), 0, 1), mg)):
        torch.manual_seed(123)
        a = sampler.sample(model, torch.tensor([0, 1]), generator=_g(9))
        torch.rand(1000)
        b = sampler.sample(model, torch.tensor([0, 1]), generator=_g(9))
        assert torch.equal(a, b)
        gens = [_g(10), _g(11)]
        c = sampler.sample(model, torch.tensor([0, 1]), generator=gens)
        d = sampler.sample(model, torch.tensor([1]), generator=[_g(11)])
        assert torch.equal(c[1:], d)
