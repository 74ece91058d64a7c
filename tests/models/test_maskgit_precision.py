"""Reduced precision for MaskGIT / ENAT (issue 15 item 2): bfloat16 weights run, the sampling arithmetic
(guidance mixing, softmax, Gumbel noise, confidence ranking) stays float32, codes come back as before and the
same seed gives the same codes."""

from __future__ import annotations

import copy

import pytest
import torch

import mgen.samplers.maskgit as maskgit_sampling
from mgen.models.enat import ENAT
from mgen.models.maskgit import MaskGITTransformer
from mgen.samplers.enat import ENATSampler
from mgen.samplers.maskgit import MaskGITSampler
from mgen.samplers.recap import ReCAP

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

MG = dict(grid_size=4, hidden_dim=32, depth=2, heads=4, mlp_dim=64, codebook_size=16, mask_token_id=16, num_classes=10)
EN = dict(grid_size=4, hidden_dim=32, enc_depth=2, dec_depth=1, heads=4, codebook_size=16, num_classes=10)


def _perturbed(m: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    mg = _perturbed(MaskGITTransformer(**MG))
    en = _perturbed(ENAT(**EN))
    return {"mg32": mg, "mg16": copy.deepcopy(mg).to(torch.bfloat16),
            "en32": en, "en16": copy.deepcopy(en).to(torch.bfloat16)}


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def spy(monkeypatch):
    """Record the dtypes the sampling arithmetic sees: the confidence ranked and the logits drawn from."""
    seen: dict[str, set[torch.dtype]] = {"confidence": set(), "draw": set(), "gumbel": set()}
    select, draw, gumbel = maskgit_sampling.select_masked, maskgit_sampling.sample_codes, maskgit_sampling.gumbel_like

    def select_spy(conf, k):
        seen["confidence"].add(conf.dtype)
        return select(conf, k)

    def draw_spy(logits, gens):
        seen["draw"].add(logits.dtype)
        return draw(logits, gens)

    def gumbel_spy(*a, **k):
        out = gumbel(*a, **k)
        seen["gumbel"].add(out.dtype)
        return out

    import mgen.samplers.enat as enat_sampling

    for mod in (maskgit_sampling, enat_sampling):
        monkeypatch.setattr(mod, "select_masked", select_spy)
        monkeypatch.setattr(mod, "sample_codes", draw_spy)
        monkeypatch.setattr(mod, "gumbel_like", gumbel_spy)
    return seen


def test_bf16_weights_float32_logits(models):
    mg, en = models["mg16"], models["en16"]
    assert {p.dtype for p in mg.parameters()} == {torch.bfloat16} == {p.dtype for p in en.parameters()}
    ids = torch.full((2, 16), 16)
    ids[:, 10:] = 3
    y = torch.tensor([1, 2])
    with torch.no_grad():
        lm, le = mg(ids, y), en(ids, y)
        assert lm.dtype == le.dtype == torch.float32
        # bf16 rounding moves the logits a little, not the ranking of a typical row
        assert (lm - models["mg32"](ids, y)).abs().max() < 0.5
        assert (le - models["en32"](ids, y)).abs().max() < 0.5
    s = MaskGITSampler(num_steps=4, cfg=2.0, cfg_schedule="constant")
    assert s.guided_logits(mg, ids, y, 1).dtype == torch.float32


@pytest.mark.parametrize("kind,sampler", [
    ("mg", MaskGITSampler(num_steps=5, cfg=2.0)),
    ("mg", MaskGITSampler(num_steps=5, cfg=3.0, schedule="arccos", reference="valeoai")),
    ("mg", MaskGITSampler(num_steps=3, top_k=4, top_p=0.9, temperature=0.8)),
    ("mg", ReCAP(MaskGITSampler(num_steps=6, cfg=1.0), pre_full_steps=1, cache_steps=1)),
    ("en", ENATSampler(num_steps=5, cfg=2.0, samp_temp=1.0)),
    ("en", ENATSampler(num_steps=4, cfg=0.0, reuse=False)),
])
def test_bf16_sampling_float32_parts_deterministic(models, spy, kind, sampler):
    model = models[f"{kind}16"]
    labels = torch.tensor([3, 1, 4])
    out = sampler.sample(model, labels, generator=_g(5))
    assert out.dtype == torch.long and out.shape == (3, 4, 4)
    assert int(out.min()) >= 0 and int(out.max()) < 16
    assert spy["confidence"] == spy["draw"] == spy["gumbel"] == {torch.float32}
    assert torch.equal(sampler.sample(model, labels, generator=_g(5)), out)  # same seed, same codes
    assert torch.equal(sampler.sample(model, labels[:1], generator=_g(5)), out[:1])  # whatever the batch
    ref = sampler.sample(models[f"{kind}32"], labels, generator=_g(5))
    assert ref.dtype == torch.long and ref.shape == out.shape


def test_from_pretrained_bf16_equals_to_bf16(models, tmp_path):
    for key in ("mg32", "en32"):
        m = models[key]
        m.save_pretrained(tmp_path / key)
        loaded = type(m).from_pretrained(tmp_path / key, torch_dtype=torch.bfloat16)
        sampler = MaskGITSampler(num_steps=4, cfg=1.0) if key == "mg32" else ENATSampler(num_steps=4, cfg=1.0)
        a = sampler.sample(loaded, torch.tensor([0, 7]), generator=_g(2))
        b = sampler.sample(models[key.replace("32", "16")], torch.tensor([0, 7]), generator=_g(2))
        assert torch.equal(a, b)
