"""FlowSampler's Euler step is diffusers' ``FlowMatchEulerDiscreteScheduler.step`` (issue 16, item 3): the library
path gives the numbers of the hand-written formula it replaced, on both time grids; Heun's corrector stays
hand-written, and the tests below show why diffusers' ``FlowMatchHeunDiscreteScheduler`` cannot replace it."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from mgen.samplers.flow import FlowSampler
from test_dit_flow import gmm_velocity, tiny_model


@torch.no_grad()
def reference_sample(s: FlowSampler, model, noise: torch.Tensor, y: torch.Tensor | None, num_classes: int | None) -> torch.Tensor:
    """The sampling loop as it was before the library step: x ← x + (t_{i+1} − t_i)·v (Python-float dt)."""
    ts = s.timesteps(tuple(noise.shape[1:]))
    x = noise.float().clone()
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        d = s.velocity(model, x, t, y, num_classes, None)
        x_euler = x + (t_next - t) * d
        if s.method == "heun" and t_next > 0:
            d2 = s.velocity(model, x_euler, t_next, y, num_classes, None)
            x = x + (t_next - t) * 0.5 * (d + d2)
        else:
            x = x_euler
    return x


GRIDS = [dict(time_grid="uniform", shift="auto"), dict(time_grid="uniform", shift=3.0),
         dict(time_grid="rae", shift="auto"), dict(time_grid="rae", shift=6.93)]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g['time_grid']}-{g['shift']}")
def test_scheduler_holds_the_grid_exactly(grid):
    s = FlowSampler(num_inference_steps=7, **grid)
    ts = s.timesteps((4, 4, 4))
    sched = s.euler_scheduler(ts)
    n = len(ts)
    assert torch.equal(sched.sigmas[:n].double(), ts)  # float32 values, no second shift
    assert sched.sigmas[-1].item() == 0.0


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g['time_grid']}-{g['shift']}")
def test_library_step_equals_the_formula_step_by_step(grid):
    s = FlowSampler(num_inference_steps=6, **grid)
    ts = s.timesteps((4, 4, 4))
    sched = s.euler_scheduler(ts)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 4, 4, generator=g)
    worst = 0.0
    for i in range(len(ts) - 1):
        v = torch.randn(x.shape, generator=g)  # v = ε − x convention: dt < 0 moves towards data
        want = x + (float(ts[i + 1]) - float(ts[i])) * v
        got = sched.step(v, sched.timesteps[i], x, return_dict=False)[0]
        worst = max(worst, (got - want).abs().max().item())
        assert got.dtype == torch.float32
        x = want
    assert worst <= 1e-6, worst
    # the comparison can fail: a scheduler that shifts the already shifted grid again is far off
    wrong = FlowMatchEulerDiscreteScheduler(shift=3.0)
    wrong.set_timesteps(sigmas=(ts[:-1] if ts[-1] == 0 else ts).float().numpy())
    assert (wrong.sigmas[: len(ts)].double() - ts).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g['time_grid']}-{g['shift']}")
def test_sampler_equals_the_previous_formula_lightningdit(grid, method):
    m = tiny_model()
    s = FlowSampler(num_inference_steps=5, method=method, guidance_scale=2.0, guidance_interval=(0.1, 0.9), **grid)
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 7])
    got = s.sample(m, y, noise=noise)
    want = reference_sample(s, m, noise, y, m.config.num_classes)
    assert (got - want).abs().max().item() <= 1e-6
    assert torch.equal(got, want)  # on CPU the two paths agree bit for bit (same float32 operations)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampler_equals_the_previous_formula_gaussian_mixture(method):
    s = FlowSampler(num_inference_steps=20, method=method)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    got = s.sample(gmm_velocity, shape=(2,), batch_size=256, noise=noise)
    want = reference_sample(s, gmm_velocity, noise, None, None)
    assert (got - want).abs().max().item() <= 1e-6


def test_heun_scheduler_cannot_replace_the_corrector():
    """Why Heun's corrector is hand-written (comment in ``FlowSampler.sample``)."""
    # 1. no custom grid: set_timesteps takes only a step count, so the uniform 1 → 0 grid cannot be given
    assert "sigmas" not in inspect.signature(FlowMatchHeunDiscreteScheduler.set_timesteps).parameters
    n = 6
    s = FlowSampler(num_inference_steps=n, method="heun", shift="auto", time_grid="rae")
    ts = s.timesteps((4, 4, 4)).float()
    h = FlowMatchHeunDiscreteScheduler(shift=s.resolve_shift((4, 4, 4)))
    h.set_timesteps(n)
    # 2. its own grid is not RAE's (it ends lower: the shift is applied to an already shifted sigma_min) and it
    #    takes one more (Euler) step to 0: 2n − 1 evaluations where RAE's heun2 makes 2(n − 1)
    assert len(h.timesteps) == 2 * n - 1
    assert h.sigmas[-2].item() < 0.5 * ts[-1].item()
    # 3. even on RAE's grid (forced into its state) its velocity, rebuilt as (x − (x − v·σ))/σ, is not v in float32
    h.sigmas = torch.cat([ts[:1], ts[1:].repeat_interleave(2), torch.zeros(1)])
    h.timesteps = torch.cat([ts[:1], ts[1:].repeat_interleave(2)]) * 1000
    h.set_begin_index(0)
    m = tiny_model()
    y = torch.tensor([1, 2])
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = s.sample(m, y, noise=noise)
    x = noise.clone()
    with torch.no_grad():
        for k in range(2 * (n - 1)):
            v = s.velocity(m, x, float(h.sigmas[k]), y, m.config.num_classes)
            x = h.step(v, h.timesteps[k], x, return_dict=False)[0]
    diff = (x - ours).abs().max().item()
    assert 1e-6 < diff < 1e-3, diff  # measured 1.3e-5 (CPU, this tiny model): rounding, but not identical
