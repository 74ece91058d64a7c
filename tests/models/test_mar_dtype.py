"""MAR fast paths and reduced precision (issue 15): exact mode within float rounding of the step-by-step
reference, bf16 / fp16 casts keep their float32 parts, float32 outputs, determinism per seed, callback, compile
refusal, and the `mgen bench sample` MAR table."""

from __future__ import annotations

import argparse

import pytest
import torch

from mgen.errors import UserError
from mgen.models.mar import MAR
from mgen.samplers import mar as mar_sampler
from mgen.samplers.mar import MARSampler
from test_mar_model import TINY
from test_mar_sampler import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

REDUCED = (torch.bfloat16, torch.float16)


def _sample(m, labels=(1, 3), seed=0, **kw):
    kw = {"num_steps": 4, "cfg": 2.5, "head_steps": 5, **kw}
    return MARSampler(**kw).sample(m, torch.tensor(labels), generator=torch.Generator().manual_seed(seed))


def test_head_plan_equals_the_step_by_step_reference():
    """HeadPlan (shared t-embedding, fused adaLN, folded coefficients) vs GaussianDiffusion.sample (the
    official order, bit-identical to LTH14/mar): float rounding only, guided and unguided."""
    m = tiny_model()
    g = torch.Generator().manual_seed(0)
    n, c = 6, m.token_embed_dim
    noise = torch.randn(n, c, generator=g)
    step_noise = torch.randn(7, n, c, generator=g)
    for z, cfg in ((torch.randn(2 * n, 32, generator=g), 3.0), (torch.randn(n, 32, generator=g), 1.0)):
        ref = m.diffloss.gen_diffusion(7).sample(m.diffloss.net, z, noise, step_noise, 0.9, cfg)
        fast = m.diffloss.sample(z, noise, step_noise, 0.9, cfg, 7)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_condition_query_rows_equal_the_full_condition():
    m = tiny_model()
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(3, 16, 4, generator=g)
    mask = torch.zeros(3, 16, dtype=torch.bool).scatter(1, torch.rand(3, 16, generator=g).argsort(1)[:, :9], True)
    query = torch.where(mask, torch.arange(16), 16).sort(1).values[:, :5]
    with torch.no_grad():
        full = m.condition(tokens, mask, torch.tensor([0, 1, 2]))
        part = m.condition(tokens, mask, torch.tensor([0, 1, 2]), query=query)
    torch.testing.assert_close(part, torch.gather(full, 1, query[..., None].expand(-1, -1, 32)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", REDUCED)
def test_cast_keeps_float32_parts(dtype):
    m = tiny_model().to(dtype)
    keep = set(MAR._keep_in_fp32_modules)
    kinds = {n: p.dtype for n, p in m.named_parameters()}
    for name, dt in kinds.items():
        assert dt == (torch.float32 if keep.intersection(name.split(".")) else dtype), name
    assert kinds["diffloss.net.time_embed.mlp.0.weight"] == torch.float32
    assert kinds["decoder_blocks.0.norm1.weight"] == torch.float32
    assert kinds["encoder_blocks.0.attn.qkv.weight"] == dtype
    assert kinds["diffloss.net.res_blocks.0.adaLN_modulation.1.weight"] == dtype
    assert m.compute_dtype == dtype


@pytest.mark.parametrize("dtype", REDUCED)
def test_reduced_precision_samples_float32_deterministically(dtype):
    m32 = tiny_model()
    m = tiny_model().to(dtype)
    a = _sample(m)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, _sample(m))
    assert not torch.equal(a, _sample(m, seed=1))
    ref = _sample(m32)
    # same draws, rounding of the reduced matmuls only: close to the float32 sample
    assert (a - ref).abs().max() < 0.25 * ref.abs().max()
    z = m.condition(torch.randn(2, 16, 4), torch.ones(2, 16, dtype=torch.bool), torch.tensor([0, 1]))
    assert z.dtype == torch.float32
    out = m.denoise(torch.randn(5, 4), torch.randint(0, 1000, (5,)), z[0, :5])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_torch_dtype_on_load_keeps_float32_parts(tmp_path):
    m = tiny_model()
    m.save_pretrained(tmp_path / "m")
    for path, kw in ((tmp_path / "m", {}), (tmp_path / "m", {"config": dict(TINY)})):
        loaded = MAR.from_pretrained(path, torch_dtype=torch.bfloat16, **kw)
        assert loaded.compute_dtype == torch.bfloat16
        assert loaded.diffloss.net.time_embed.mlp[0].weight.dtype == torch.float32
        assert loaded.encoder_norm.weight.dtype == torch.float32
        assert _sample(loaded).dtype == torch.float32


def test_float32_fast_path_matches_the_generic_path():
    """The sampler's fast path (query rows, scatter) and the generic one (full condition, boolean indexing,
    used under ReCAP hooks) give the same sample up to float rounding."""

    class _Identity:
        def condition_fn(self, model, step, rank):
            return model.condition

        def head_steps(self, step, head_steps):
            return head_steps

    m = tiny_model()
    a = _sample(m)
    b = MARSampler(num_steps=4, cfg=2.5, head_steps=5).sample(
        m, torch.tensor([1, 3]), generator=torch.Generator().manual_seed(0), hooks=_Identity())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_callback_called_per_step_and_can_replace_tokens():
    m = tiny_model()
    s = MARSampler(num_steps=5, cfg=1.0, head_steps=3)
    seen = []

    def cb(step, t, state):
        seen.append((step, t, state["tokens"].shape, int(state["mask"][0].sum())))

    s.sample(m, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0), callback=cb)
    assert len(seen) == s.total_steps == 5
    assert [x[0] for x in seen] == list(range(5)) and seen[-1][3] == 0 and seen[-1][1] == 0.0
    zero = s.sample(m, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0),
                    callback=lambda step, t, st: {"tokens": torch.zeros_like(st["tokens"])} if step == 4 else None)
    assert torch.equal(zero, torch.zeros_like(zero))
    with pytest.raises(UserError):
        s.sample(m, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0),
                 callback=lambda step, t, st: {"mask": ~st["mask"]})


def test_compile_refused_without_a_backend(monkeypatch):
    monkeypatch.setattr(mar_sampler, "_compile_available", lambda: "no C++ compiler on PATH")
    with pytest.raises(UserError, match="compile"):
        MARSampler(compile=True)


def test_bench_sample_mar_table(tmp_path):
    from mgen.bench import sample as bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--model", "mar-digits", "--random-weights", "--steps", "2", "--head-steps", "2",
                         "--batch-size", "2", "--repeats", "1", "--modes", "fp32", "bf16", "bf16+recap",
                         "--out", str(tmp_path)])
    result = bench.run(args)
    assert [r["mode"] for r in result["rows"]] == ["fp32", "bf16", "bf16+recap"]
    for r in result["rows"]:
        assert r["images_per_s"] > 0 and r["head_s_per_image"] >= 0 and "peak_memory_mb" in r
    assert (tmp_path / "sample.json").exists() and "bf16+recap" in (tmp_path / "sample.md").read_text()
    with pytest.raises(UserError):
        p2 = p.parse_args(["--model", "mar-digits", "--random-weights", "--modes", "bf17"])
        bench.run(p2)
