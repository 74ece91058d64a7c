"""A diffusers DiTPipeline folder (DiTTransformer2DModel + AutoencoderKL + DDPM/DDIM scheduler): our DiT from its
``transformer/`` and ``DDPMSampler.from_scheduler_config`` from its ``scheduler/`` reproduce diffusers' own
``DiTPipeline.__call__`` (diffusers 0.42 ``pipeline_dit.py``) to 1e-5 from the same initial latents.

What diffusers' pipeline does, and the test mirrors: latents from ``randn_tensor(shape, generator)``; with
``guidance_scale > 1`` the batch [x; x] with labels [y; 1000] (the null class is hard-coded, so the tiny model has
1000 classes), guidance on all ``in_channels`` eps channels (our ``guidance_channels=None``), the learned-variance
channels dropped before ``scheduler.step`` (the scheduler's own ``variance_type`` is used); the scheduler's own
``set_timesteps(n)``; at the end ``vae.decode(latents / scaling_factor)``. The pipeline has no ``latents=`` /
``output_type="latent"`` in 0.42, so its final latents are read where it hands them to ``vae.decode``. DDPM's
step noise comes from the global RNG in diffusers' pipeline (``generator`` is not passed to ``step``) and from
per-sample generators in ours: both draw it through ``scheduling_ddpm.randn_tensor``, which the test replaces by
one fixed noise table, so that both runs see the same noise.
"""

from __future__ import annotations

import json

import pytest
import torch

from mgen.errors import UserError
from mgen.models.dit import DiT
from mgen.samplers.ddpm import DDPMSampler

STEPS, SCALE, LABELS = 8, 3.0, [3, 7, 999]


def _tiny_pipeline(folder, scheduler):
    from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    tr = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                               sample_size=4, patch_size=2, num_embeds_ada_norm=1000)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tr.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4, sample_size=4)
    pipe = DiTPipeline(transformer=tr.eval(), vae=vae.eval(), scheduler=scheduler)
    pipe.save_pretrained(folder)
    return pipe


def _noise_table(monkeypatch):
    """Replace the DDPM step noise by a fixed table (row i of call k), whichever generator is passed."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod

    table = torch.randn(64, 8, 4, 4, 4, generator=torch.Generator().manual_seed(123))
    calls = {"n": 0}

    def fixed(shape, generator=None, device=None, dtype=None, layout=None):
        k = calls["n"]
        calls["n"] += 1
        return table[k, : shape[0]].to(device=device or "cpu", dtype=dtype or torch.float32)

    monkeypatch.setattr(ddpm_mod, "randn_tensor", fixed)
    return calls


def _schedulers():
    from diffusers import DDIMScheduler, DDPMScheduler

    return {
        "ddpm-default": DDPMScheduler(),  # clip_sample=True, fixed_small, leading
        "ddim-default": DDIMScheduler(),  # clip_sample=True, leading, set_alpha_to_one
        "ddpm-linspace-noclip": DDPMScheduler(clip_sample=False, timestep_spacing="linspace", variance_type="fixed_large",
                                              beta_schedule="scaled_linear", beta_end=0.012, beta_start=0.00085),
        "ddim-trailing-v": DDIMScheduler(clip_sample=True, clip_sample_range=0.5, timestep_spacing="trailing",
                                         prediction_type="v_prediction", set_alpha_to_one=False),
        "ddim-offset-sample": DDIMScheduler(clip_sample=True, clip_sample_range=0.1, steps_offset=1, prediction_type="sample",
                                            beta_schedule="squaredcos_cap_v2"),
    }


@pytest.mark.parametrize("name", list(_schedulers()))
def test_matches_diffusers_dit_pipeline(tmp_path, monkeypatch, name):
    from diffusers import DiTPipeline
    from diffusers.utils.torch_utils import randn_tensor

    calls = _noise_table(monkeypatch)
    folder = tmp_path / "pipe"
    _tiny_pipeline(folder, _schedulers()[name])
    pipe = DiTPipeline.from_pretrained(folder).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    seen = {}
    decode = pipe.vae.decode

    def spy(z, *args, **kwargs):
        seen["z"] = z.clone()
        return decode(z, *args, **kwargs)

    pipe.vae.decode = spy
    with torch.no_grad():
        images = pipe(LABELS, guidance_scale=SCALE, generator=torch.Generator().manual_seed(5),
                      num_inference_steps=STEPS, output_type="pt").images
    sf = pipe.vae.config.scaling_factor
    want = seen["z"] * sf

    model = DiT.from_pretrained(folder / "transformer")
    assert model.config.num_classes == 1000 and model.config.learn_sigma
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    sampler = DDPMSampler.from_scheduler_config(config, num_inference_steps=STEPS, guidance_scale=SCALE,
                                                guidance_channels=None)
    assert sampler.clip_sample == config["clip_sample"] and sampler.timestep_rule == "diffusers"
    assert sampler.total_steps == STEPS
    latents = randn_tensor((len(LABELS), 4, 4, 4), generator=torch.Generator().manual_seed(5))
    calls["n"] = 0
    steps_seen = []
    got = sampler.sample(model, LABELS, latents=latents.clone(),
                         callback=lambda i, t, state: steps_seen.append((i, t)))
    assert got.dtype == torch.float32
    assert [i for i, _ in steps_seen] == list(range(STEPS))
    assert [int(t) for _, t in steps_seen] == [int(t) for t in pipe.scheduler.timesteps]
    assert want.abs().max() > 0.05
    assert (got - want).abs().max().item() < 1e-5, name
    with torch.no_grad():  # the decoded images too
        ours = (pipe.vae.decode(got / sf).sample / 2 + 0.5).clamp(0, 1)
    assert (ours - images).abs().max().item() < 1e-5

    # the setting is honoured, not just carried: the other clip_sample gives another result
    calls["n"] = 0
    flipped = DDPMSampler.from_scheduler_config({**config, "clip_sample": not config["clip_sample"]},
                                                num_inference_steps=STEPS, guidance_scale=SCALE, guidance_channels=None)
    assert (flipped.sample(model, LABELS, latents=latents.clone()) - want).abs().max().item() > 1e-3
    # the pipeline folder itself loads (its transformer/), and the scheduler object works as its config
    assert torch.equal(DiT.from_pretrained(folder).state_dict()["blocks.0.attn.qkv.weight"],
                       model.state_dict()["blocks.0.attn.qkv.weight"])
    again = DDPMSampler.from_scheduler_config(pipe.scheduler, num_inference_steps=STEPS, guidance_scale=SCALE,
                                              guidance_channels=None)
    assert again == sampler


def test_scheduler_settings_it_cannot_reproduce():
    from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

    base = dict(DDPMScheduler().config)
    for bad, match in (({"thresholding": True}, "thresholding"),
                       ({"trained_betas": [0.1] * 1000}, "beta table"),
                       ({"timestep_spacing": "karras"}, "timestep_spacing"),
                       ({"variance_type": "wide"}, "variance_type"),
                       ({"prediction_type": "flow"}, "prediction_type"),
                       ({"beta_schedule": "cosine"}, "beta_schedule")):
        with pytest.raises(UserError, match=match):
            DDPMSampler.from_scheduler_config({**base, **bad}, method="ddpm")
    with pytest.raises(UserError, match="EulerDiscreteScheduler"):
        DDPMSampler.from_scheduler_config(EulerDiscreteScheduler())
    with pytest.raises(UserError, match="_class_name"):
        DDPMSampler.from_scheduler_config({"num_train_timesteps": 1000})
    with pytest.raises(UserError, match="contradicts"):
        DDPMSampler.from_scheduler_config({"_class_name": "DDIMScheduler"}, method="ddpm")
    with pytest.raises(UserError, match="unknown DDPM sampler settings"):
        DDPMSampler.from_scheduler_config(DDIMScheduler(), steps=3)
    # keys the scheduler class does not take are ignored (as diffusers' from_config ignores them); the inert
    # thresholding numbers too; the defaults are diffusers' (clip_sample=True, fixed_small, leading)
    s = DDPMSampler.from_scheduler_config({"_class_name": "DDPMScheduler", "use_karras_sigmas": True,
                                           "sample_max_value": 3.0})
    assert (s.method, s.clip_sample, s.variance_type, s.timestep_spacing) == ("ddpm", True, "fixed_small", "leading")
    assert DDPMSampler.from_scheduler_config(DDIMScheduler().config, method="ddim").method == "ddim"


def test_learned_variance_config_uses_the_variance_channels(tmp_path):
    """variance_type learned_range (which diffusers' DiTPipeline cannot run: it drops the variance channels)
    drives our step with the model's variance half, as the official DiT sampler."""
    from diffusers import DDPMScheduler

    _tiny_pipeline(tmp_path / "p", DDPMScheduler(variance_type="learned_range", clip_sample=False))
    model = DiT.from_pretrained(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "scheduler" / "scheduler_config.json").read_text())
    s = DDPMSampler.from_scheduler_config(config, num_inference_steps=4)
    a = s.sample(model, [1, 2], generator=torch.Generator().manual_seed(0))
    b = DDPMSampler.from_scheduler_config({**config, "variance_type": "fixed_small"}, num_inference_steps=4).sample(
        model, [1, 2], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    with pytest.raises(UserError, match="learn_sigma"):
        small = DiT(input_size=4, patch_size=2, in_channels=4, hidden_size=16, depth=1, num_heads=2, num_classes=10,
                    learn_sigma=False)
        s.sample(small, [1])
