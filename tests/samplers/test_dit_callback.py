"""The sampler contract of DDPMSampler and FlowSampler: ``callback(step, timestep, state)`` after every step,
``total_steps`` calls, returned tensors replace the state (diffusers' ``callback_on_step_end``), no progress
bar inside, randomness only from the passed generator(s)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import mgen.samplers.ddpm as ddpm_mod
import mgen.samplers.flow as flow_mod
from mgen.models.dit import DiT
from mgen.models.lightningdit import LightningDiT
from mgen.samplers.ddpm import DDPMSampler
from mgen.samplers.flow import FlowSampler

DIT = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=10)
LDIT = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=10,
            head_depth=1, head_hidden_size=32, head_num_heads=2)


def randomize(model, std: float = 0.05):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


SAMPLERS = [
    (DDPMSampler(num_inference_steps=5, guidance_scale=2.0), DIT, DiT),
    (DDPMSampler(num_inference_steps=7, method="ddim", eta=0.5), DIT, DiT),
    (DDPMSampler(num_inference_steps=4, timestep_rule="diffusers", clip_sample=True, timestep_spacing="trailing"), DIT, DiT),
    (FlowSampler(num_inference_steps=5, method="heun", guidance_scale=1.5), LDIT, LightningDiT),
    (FlowSampler(num_inference_steps=6, time_grid="rae"), LDIT, LightningDiT),
]
IDS = ["ddpm", "ddim-eta", "ddpm-diffusers", "flow-heun", "flow-rae-grid"]


@pytest.mark.parametrize("sampler,arch,cls", SAMPLERS, ids=IDS)
def test_callback_contract(sampler, arch, cls):
    model = randomize(cls(**arch))
    labels = [1, 2]
    plain = sampler.sample(model, labels, generator=torch.Generator().manual_seed(0))
    calls = []

    def spy(step, timestep, state):
        assert set(state) == {"latents"} and state["latents"].shape == plain.shape
        calls.append((step, timestep))
        return None

    assert torch.equal(sampler.sample(model, labels, generator=torch.Generator().manual_seed(0), callback=spy), plain)
    assert [s for s, _ in calls] == list(range(sampler.total_steps))
    assert all(isinstance(t, float) for _, t in calls)
    assert [t for _, t in calls] == sorted((t for _, t in calls), reverse=True)  # from noise to data
    if isinstance(sampler, DDPMSampler):
        assert [int(t) for _, t in calls] == sampler.timestep_list()
    else:
        assert [t for _, t in calls] == pytest.approx(sampler.timesteps((4, 4, 4))[:-1].tolist())
    # returning the same tensors changes nothing; returning new ones replaces the state
    same = sampler.sample(model, labels, generator=torch.Generator().manual_seed(0),
                          callback=lambda i, t, st: {"latents": st["latents"].clone(), "unknown": torch.ones(1)})
    assert torch.equal(same, plain)
    last = sampler.total_steps - 1
    zeroed = sampler.sample(model, labels, generator=torch.Generator().manual_seed(0),
                            callback=lambda i, t, st: {"latents": torch.zeros_like(st["latents"])} if i == last else None)
    assert torch.equal(zeroed, torch.zeros_like(plain))
    early = sampler.sample(model, labels, generator=torch.Generator().manual_seed(0),
                           callback=lambda i, t, st: {"latents": st["latents"] * 0.5} if i == 0 else None)
    assert not torch.allclose(early, plain)


def test_no_progress_bar_and_no_global_rng():
    for mod, cls in ((ddpm_mod, DDPMSampler), (flow_mod, FlowSampler)):
        assert "tqdm" not in inspect.getsource(mod)
        assert "progress" not in {f.name for f in dataclasses.fields(cls)}
    model = randomize(DiT(**DIT))
    s = DDPMSampler(num_inference_steps=3, method="ddim", eta=1.0)
    torch.manual_seed(0)
    a = s.sample(model, [1], generator=torch.Generator().manual_seed(4))
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(a, s.sample(model, [1], generator=torch.Generator().manual_seed(4)))
    gens = [torch.Generator().manual_seed(9), torch.Generator().manual_seed(10)]  # diffusers' list of generators
    two = s.sample(model, [1, 2], generator=gens)
    one = s.sample(model, [2], generator=[torch.Generator().manual_seed(10)])
    assert torch.allclose(two[1:], one, atol=1e-6)
