"""Flow matching (RAE shift, time sampling, Euler/Heun, guidance interval), LightningDiT + DDT head, and
the RAE-DiT pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from mgen import registry
from mgen.errors import UserError
from mgen.models.lightningdit import LightningDiT, LightningDiTConfig
from mgen.nn import Rope2D
from mgen.samplers.flow import FlowSampler, flow_matching_loss, interpolate, rae_shift, sample_time, shift_time

TINY = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10,
            head_depth=1, head_hidden_size=48, head_num_heads=3, use_qknorm=True)


def test_shift_formula_hand_values():
    assert rae_shift(768, 16, 16) == pytest.approx(math.sqrt(48))  # 196608 / 4096 = 48
    assert rae_shift(4, 32, 32) == 1.0
    assert shift_time(0.5, 3.0) == pytest.approx(0.75)  # 1.5 / (1 + 2·0.5)
    assert shift_time(0.25, 3.0) == pytest.approx(0.5)  # 0.75 / 1.5
    assert shift_time(0.5, math.sqrt(48)) == pytest.approx(0.5 * math.sqrt(48) / (1 + 0.5 * (math.sqrt(48) - 1)))
    t = torch.tensor([0.0, 1.0])
    assert torch.equal(shift_time(t, 6.0), t)


def test_sampling_grid_is_diffusers_shifted_grid():
    s = FlowSampler(num_inference_steps=4, shift=3.0)
    ts = s.timesteps((4, 8, 8))
    want = torch.tensor([shift_time(1 - i / 4, 3.0) for i in range(5)], dtype=torch.float64)
    assert torch.allclose(ts, want, atol=1e-6)
    auto = FlowSampler(num_inference_steps=4, shift="auto").timesteps((768, 16, 16))
    assert auto[1].item() == pytest.approx(shift_time(0.75, math.sqrt(48)), abs=1e-6)


def test_time_distributions():
    g = torch.Generator().manual_seed(0)
    ln = sample_time(20000, g, "logit-normal")
    un = sample_time(20000, g, "uniform")
    sh = sample_time(20000, g, "logit-normal", shift=3.0)
    assert 0 < ln.min() and ln.max() < 1 and abs(ln.mean().item() - 0.5) < 0.01
    assert abs(un.mean().item() - 0.5) < 0.01 and abs(un.var().item() - 1 / 12) < 0.005
    assert ln.std() < un.std()  # logit-normal(0, 1) concentrates around 0.5
    assert sh.mean() > 0.65  # the shift moves times towards noise
    a = sample_time(5, torch.Generator().manual_seed(1))
    assert torch.equal(a, sample_time(5, torch.Generator().manual_seed(1)))
    with pytest.raises(UserError):
        sample_time(3, g, "beta")


# -- a 2-D Gaussian mixture whose exact velocity field is known ------------------------------------------
MU = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=torch.float64)
SIG = torch.tensor([0.3, 0.5, 0.4], dtype=torch.float64)
PI = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def gmm_velocity(x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
    """E[ε − x_0 | x_t] for x_t = (1 − t)x_0 + tε with x_0 ~ Σ π_k N(μ_k, σ_k² I)."""
    x = x.double()
    tt = t.double()[:, None, None]  # (B, 1, 1)
    var = (1 - tt) ** 2 * SIG[None, :, None] ** 2 + tt ** 2  # (B, K, 1)
    diff = x[:, None, :] - (1 - tt) * MU[None]  # (B, K, 2)
    logw = torch.log(PI)[None] - (diff ** 2).sum(-1) / (2 * var[..., 0]) - torch.log(var[..., 0])
    w = torch.softmax(logw, dim=1)[..., None]
    e_x0 = MU[None] + (1 - tt) * SIG[None, :, None] ** 2 / var * diff
    e_eps = tt / var * diff
    return (w * (e_eps - e_x0)).sum(1).float()


@pytest.mark.parametrize("method,steps", [("euler", 100), ("heun", 25)])
def test_sampler_matches_gaussian_mixture_moments(method, steps):
    s = FlowSampler(num_inference_steps=steps, method=method)
    x = s.sample(gmm_velocity, shape=(2,), batch_size=3000, generator=torch.Generator().manual_seed(0))
    mean = (PI[:, None] * MU).sum(0)
    second = sum(PI[k] * (torch.outer(MU[k], MU[k]) + SIG[k] ** 2 * torch.eye(2, dtype=torch.float64)) for k in range(3))
    cov = second - torch.outer(mean, mean)
    xs = x.double()
    assert torch.allclose(xs.mean(0), mean, atol=0.08)
    assert torch.allclose(torch.cov(xs.T), cov, atol=0.15)
    # most samples land near a component centre (not blurred between them)
    d = torch.cdist(xs, MU).min(1).values
    assert (d < 3 * SIG.max()).float().mean() > 0.95


def test_guidance_interval():
    calls = []

    def model(x, t, y):
        calls.append((round(float(t[0]), 4), x.shape[0]))
        return (y.float() == 10).float()[:, None].expand(-1, 2) * 1.0 + 2.0  # cond → 2, uncond (null) → 3

    s = FlowSampler(num_inference_steps=4, guidance_scale=4.0, guidance_interval=(0.3, 0.6))
    y = torch.tensor([1, 2])
    out_in = s.velocity(model, torch.zeros(2, 2), 0.5, y, 10)
    out_out = s.velocity(model, torch.zeros(2, 2), 0.9, y, 10)
    assert torch.allclose(out_in, torch.full((2, 2), 3.0 + 4.0 * (2.0 - 3.0)))
    assert torch.allclose(out_out, torch.full((2, 2), 2.0))
    assert calls == [(0.5, 4), (0.9, 2)]  # the unconditional pass runs only inside the interval


def test_flow_matching_loss_target():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2)
    seen = {}

    def model(xt, t, y):
        seen["xt"], seen["t"] = xt, t
        return torch.zeros_like(xt)

    loss = flow_matching_loss(model, x, None, g, distribution="uniform")
    g2 = torch.Generator().manual_seed(3)
    t = torch.rand(6, generator=g2)
    eps = torch.randn(6, 2, generator=g2)
    assert torch.allclose(seen["t"], t) and torch.allclose(seen["xt"], interpolate(x, eps, t))
    assert loss.item() == pytest.approx(((eps - x) ** 2).mean().item(), rel=1e-6)


def test_rope2d_is_relative():
    rope = Rope2D(8, grid=4)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(8, generator=g)
    k = torch.randn(8, generator=g)
    qs = rope(q.expand(1, 1, 16, 8).contiguous())[0, 0]
    ks = rope(k.expand(1, 1, 16, 8).contiguous())[0, 0]

    def idx(r, c):
        return r * 4 + c

    # same (row, column) offset → same score; the unrotated score at offset 0
    assert torch.allclose(qs[idx(0, 0)] @ ks[idx(1, 2)], qs[idx(2, 1)] @ ks[idx(3, 3)], atol=1e-5)
    assert torch.allclose(qs[idx(1, 1)] @ ks[idx(1, 1)], q @ k, atol=1e-5)
    assert not torch.allclose(qs[idx(0, 0)] @ ks[idx(1, 2)], qs[idx(0, 0)] @ ks[idx(2, 1)], atol=1e-3)


def tiny_model(seed=0, **kw):
    m = LightningDiT(**{**TINY, **kw})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return m.eval()


@pytest.mark.parametrize("head_depth", [0, 1])
def test_lightningdit_forward_and_round_trip(tmp_path, head_depth):
    m = tiny_model(head_depth=head_depth)
    x, t, y = torch.randn(3, 4, 4, 4), torch.rand(3), torch.tensor([0, 9, 10])
    with torch.no_grad():
        out = m(x, t, y)
    assert out.shape == (3, 4, 4, 4)
    keys = m.state_dict().keys()
    assert "t_embedder.W" in keys and "blocks.0.mlp.w12.weight" in keys and "blocks.0.attn.q_norm.weight" in keys
    assert ("s_embedder.proj.weight" in keys) == (head_depth > 0)
    m.save_pretrained(tmp_path / "m")
    again = LightningDiT.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(again(x, t, y), out)
    torch.save({"ema": m.state_dict(), "model": {}}, tmp_path / "ckpt.pt")
    cfg = {**TINY, "head_depth": head_depth}
    with torch.no_grad():
        assert torch.equal(LightningDiT.from_pretrained(tmp_path / "ckpt.pt", config=cfg)(x, t, y), out)
    with pytest.raises(Exception, match="does not match"):
        LightningDiT.from_pretrained(tmp_path / "ckpt.pt", config={**cfg, "hidden_size": 64})


def test_lightningdit_bad_input():
    m = tiny_model()
    with pytest.raises(UserError):
        m(torch.randn(1, 3, 4, 4), torch.rand(1), torch.tensor([0]))
    with pytest.raises(UserError, match="built for"):
        m(torch.randn(1, 4, 6, 6), torch.rand(1), torch.tensor([0]))
    with pytest.raises(UserError, match="divisible"):
        LightningDiTConfig.from_mapping({**TINY, "input_size": 5, "patch_size": 2})
    s = FlowSampler(num_inference_steps=2)
    with pytest.raises(UserError, match="unknown class"):
        s.sample(m, [11])
    for bad in (dict(num_inference_steps=0), dict(method="rk4"), dict(guidance_interval=(0.7, 0.2))):
        with pytest.raises(UserError):
            FlowSampler(**bad).sample(m, [1])


def test_flow_sampler_deterministic_across_batch_sizes():
    m = tiny_model()
    s = FlowSampler(num_inference_steps=6, method="heun", guidance_scale=2.0, guidance_interval=(0.2, 0.8), shift="auto")
    a = s.sample(m, [1, 2, 3], generator=torch.Generator().manual_seed(5))
    b = s.sample(m, [1, 2], generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a[:2], b, atol=1e-5)
    assert torch.equal(a, s.sample(m, [1, 2, 3], generator=torch.Generator().manual_seed(5)))


def test_registry_configs():
    entries = {e.name: e for e in registry.list_models() if e.family == "rae-dit"}
    for name in ("rae-dit-s", "rae-dit-xl", "lightningdit-xl-1"):
        cfg = LightningDiTConfig.from_mapping(entries[name].arch)
        with torch.device("meta"):
            m = LightningDiT(cfg)
        n = sum(p.numel() for p in m.parameters()) / 1e6
        assert abs(n - float(entries[name].num_params.rstrip("M"))) < 1.0
    assert entries["rae-dit-xl"].arch["head_hidden_size"] == 2048 and entries["rae-dit-xl"].arch["head_depth"] == 2


def test_rae_dit_pipeline():
    from mgen.pipelines.rae_dit import RAEDiTPipeline
    from mgen.tokenizers.kl import KLTokenizer

    vae = KLTokenizer.from_arch(registry.get("kl-digits").arch).eval()
    pipe = RAEDiTPipeline(tiny_model(), vae, FlowSampler(num_inference_steps=3))
    img = pipe([1, 2], guidance_scale=1.5, generator=torch.Generator().manual_seed(0), output_type="pt", method="heun").images
    assert img.shape == (2, 3, 16, 16) and 0 <= img.min() and img.max() <= 1
    assert len(pipe([4], num_inference_steps=2).images) == 1
    with pytest.raises(UserError, match="euler or heun"):
        pipe([4], method="ddpm")


def _rae_rope_table(head_dim: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE table as RAE's release stores it (EVA's VisionRotaryEmbeddingFast with dim = head_dim / 2):
    frequencies 10000^(-2i/d) repeated pairwise, row angles then column angles, (grid², head_dim)."""
    d = head_dim // 2
    freqs = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    ang = (torch.arange(grid).float()[:, None] * freqs[None]).repeat_interleave(2, dim=-1)
    full = torch.cat([ang[:, None, :].expand(grid, grid, d), ang[None, :, :].expand(grid, grid, d)], dim=-1)
    return full.reshape(grid * grid, head_dim).cos(), full.reshape(grid * grid, head_dim).sin()


def test_rope_table_is_the_rae_layout():
    cos, sin = _rae_rope_table(64, 4)
    r = Rope2D(64, 4)
    assert torch.allclose(r.cos, cos, atol=1e-6) and torch.allclose(r.sin, sin, atol=1e-6)


def test_rae_checkpoint_with_rope_buffers_loads_with_inferred_config(tmp_path):
    # a RAE-release-style plain LightningDiT checkpoint (width 384 -> 6 heads, learn_sigma) with its RoPE buffers
    arch = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=384, depth=1, num_heads=6, num_classes=10,
                head_depth=0, learn_sigma=True, use_qknorm=True)
    m = tiny_model(**arch)
    sd = dict(m.state_dict())
    sd["feat_rope.freqs_cos"], sd["feat_rope.freqs_sin"] = _rae_rope_table(64, 4)
    torch.save({"model": sd, "ema": sd, "optimizer": {}}, tmp_path / "stage2_model.pt")
    again = LightningDiT.from_pretrained(tmp_path / "stage2_model.pt")
    for k, v in arch.items():
        assert getattr(again.config, k) == v, k
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([0.2, 0.9]), torch.tensor([3, 10])
    with torch.no_grad():
        out = m(x, t, y)
        assert out.shape == (2, 4, 4, 4)  # learn_sigma: the variance half is dropped
        assert torch.equal(again(x, t, y), out)
    with pytest.raises(UserError, match="heads"):  # widths the paper does not use need config=
        sd = {k: v for k, v in tiny_model(head_depth=0).state_dict().items()}
        torch.save(sd, tmp_path / "odd.pt")
        LightningDiT.from_pretrained(tmp_path / "odd.pt")


def test_rae_time_grid():
    s = FlowSampler(num_inference_steps=50, shift="auto", time_grid="rae")
    ts = s.timesteps((768, 16, 16))
    a = math.sqrt(48)
    assert len(ts) == 50 and ts[0].item() == pytest.approx(1.0)
    assert ts[-1].item() == pytest.approx(shift_time(0.001, a), rel=1e-3)  # RAE stops at t = shift(1 - 0.999), float32
    assert ts[10].item() == pytest.approx(shift_time(1 - 10 * 0.999 / 49, a), rel=1e-4)
    with pytest.raises(UserError, match="time_grid"):
        FlowSampler(num_inference_steps=1, time_grid="rae").validate()
    with pytest.raises(UserError, match="time_grid"):
        FlowSampler(time_grid="karras").validate()
    m = tiny_model()
    y = [1, 2]
    heun = FlowSampler(num_inference_steps=4, method="heun", time_grid="rae").sample(m, y, generator=torch.Generator().manual_seed(0))
    assert heun.shape == (2, 4, 4, 4) and torch.isfinite(heun).all()
