"""DDPM/DDIM sampling of DiT through diffusers schedulers (learned-range variance) and the DiT pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from mgen import registry
from mgen.errors import UserError
from mgen.models.dit import DiT, DiTConfig
from mgen.pipelines.dit import DiTPipeline
from mgen.samplers.ddpm import DDPMSampler

TINY = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10)


def tiny_model(seed: int = 0, **kw) -> DiT:
    m = DiT(**{**TINY, **kw})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def test_ddpm_step_is_learned_range_posterior():
    """One respaced DDPM step equals Ho et al. Eq. 7 mean with Nichol & Dhariwal Eq. 15 variance."""
    sampler = DDPMSampler(num_inference_steps=10)
    sched = sampler.make_scheduler()
    ts = [int(t) for t in sched.timesteps]
    assert ts == sorted({round(i * 999 / 9) for i in range(10)}, reverse=True)  # official space_timesteps
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    t, t_prev = ts[1], ts[2]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 4, generator=g)
    eps = torch.randn(2, 4, 4, 4, generator=g)
    v = torch.rand(2, 4, 4, 4, generator=g) * 2 - 1
    out = sched.step(torch.cat([eps, v], 1), ts[1], x, generator=torch.Generator().manual_seed(5)).prev_sample
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(5)).double()
    a_t, a_p = abar[t], abar[t_prev]
    beta = 1 - a_t / a_p
    x0 = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
    mean = a_p.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_p) / (1 - a_t) * x.double()
    post = beta * (1 - a_p) / (1 - a_t)
    frac = (v.double() + 1) / 2
    logvar = frac * beta.log() + (1 - frac) * post.log()
    want = mean + (0.5 * logvar).exp() * noise
    assert (out.double() - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_sampling_deterministic_across_batch_sizes(method):
    model = tiny_model()
    s = DDPMSampler(num_inference_steps=8, guidance_scale=3.0, method=method)
    a = s.sample(model, [1, 2, 3], generator=torch.Generator().manual_seed(7))
    b = s.sample(model, [1, 2, 3], generator=torch.Generator().manual_seed(7))
    c = s.sample(model, [1, 2], generator=torch.Generator().manual_seed(7))
    d = s.sample(model, [1, 2, 3], generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 4, 4, 4) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert torch.allclose(a[:2], c, atol=1e-4)
    assert not torch.allclose(a, d)


def test_guidance_scale_one_is_conditional_model():
    model = tiny_model()
    x = torch.randn(2, 4, 4, 4)
    y = torch.tensor([4, 5])
    t = torch.tensor([500, 500])
    s1, s3 = DDPMSampler(guidance_scale=1.0), DDPMSampler(guidance_scale=3.0)
    with torch.no_grad():
        out1 = s1.model_output(model, x, t, y, 10)
        out3 = s3.model_output(model, x, t, y, 10)
        cond, unc = model(x, t, y), model(x, t, torch.tensor([10, 10]))
    assert torch.equal(out1, cond)
    assert torch.allclose(out3[:, :3], unc[:, :3] + 3 * (cond[:, :3] - unc[:, :3]), atol=1e-5)
    assert torch.allclose(out3[:, 3:], cond[:, 3:], atol=1e-6)


def test_bad_sampler_input():
    model = tiny_model()
    with pytest.raises(UserError, match="unknown class 10"):
        DDPMSampler(num_inference_steps=2).sample(model, [1, 10])
    with pytest.raises(UserError, match="unknown class -1"):
        DDPMSampler(num_inference_steps=2).sample(model, [-1])
    with pytest.raises(UserError, match=">= 1"):
        DDPMSampler(num_inference_steps=0).sample(model, [1])
    with pytest.raises(UserError, match="ddpm or ddim"):
        DDPMSampler(method="euler").sample(model, [1])


def test_pipeline_outputs():
    from mgen.tokenizers.kl import KLTokenizer

    vae = KLTokenizer.from_arch(registry.get("kl-digits").arch).eval()
    pipe = DiTPipeline(tiny_model(), vae, DDPMSampler(num_inference_steps=4))
    g = torch.Generator().manual_seed(0)
    pt = pipe(class_labels=[1, 2], guidance_scale=2.0, generator=g, num_inference_steps=4, output_type="pt").images
    assert pt.shape == (2, 3, 16, 16) and pt.min() >= 0 and pt.max() <= 1
    pil = pipe([1, 2], guidance_scale=2.0, generator=torch.Generator().manual_seed(0), num_inference_steps=4).images
    assert len(pil) == 2 and pil[0].size == (16, 16)
    arr = pipe([1, 2], guidance_scale=2.0, generator=torch.Generator().manual_seed(0), num_inference_steps=4,
               output_type="np").images
    assert arr.shape == (2, 16, 16, 3)
    assert abs(float(arr[0].mean()) - float(pt[0].mean())) < 1e-5
    lat = pipe([3], generator=torch.Generator().manual_seed(0), output_type="latent", return_dict=False)[0]
    assert lat.shape == (1, 4, 4, 4)
    with pytest.raises(UserError, match="output_type"):
        pipe([1], output_type="jpeg")
    with pytest.raises(UserError, match=">= 1"):
        pipe([1], num_inference_steps=0)
    assert math.isclose(vae.scaling_factor, float(vae.scaling_factor))


def test_pipelines_from_pretrained_folders(tmp_path):
    from mgen.models.lightningdit import LightningDiT
    from mgen.pipelines.rae_dit import RAEDiTPipeline
    from mgen.tokenizers.kl import KLTokenizer

    vae = KLTokenizer.from_arch(registry.get("kl-digits").arch).eval()
    tiny_model().save_pretrained(tmp_path / "dit")
    pipe = DiTPipeline.from_pretrained(tmp_path / "dit", tokenizer=vae, num_inference_steps=3, method="ddim")
    assert pipe.sampler.num_inference_steps == 3 and pipe.sampler.method == "ddim"
    assert pipe([0, 9], output_type="pt").images.shape == (2, 3, 16, 16)
    LightningDiT(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=10,
                 head_depth=1, head_hidden_size=32, head_num_heads=2).save_pretrained(tmp_path / "rae")
    rpipe = RAEDiTPipeline.from_pretrained(tmp_path / "rae", tokenizer=vae, num_inference_steps=2, method="heun")
    assert rpipe.sampler.method == "heun"
    assert rpipe([3], output_type="np").images.shape == (1, 16, 16, 3)
    with pytest.raises(UserError, match="tokenizer"):
        DiTPipeline.from_pretrained(tmp_path / "dit")


@pytest.mark.parametrize("name", ["dit-digits", pytest.param("rae-dit-digits", marks=pytest.mark.slow)])
def test_mgen_train_builders(tmp_path, monkeypatch, name):
    """`mgen train --config configs/<name>.yaml` builds the shared trainer on tokenizer latents of the digits."""
    import mgen.models.dit as dit_mod
    from mgen.tokenizers.kl import KLTokenizer
    from mgen.train.tasks import build_training

    entry = registry.get(name)
    channels = entry.arch["in_channels"]
    arch = {**registry.get("kl-digits").arch, "z_channels": channels}
    monkeypatch.setattr(dit_mod, "load_tokenizer", lambda _name: KLTokenizer.from_arch(arch).eval())
    import mgen.tokenizers.digits as digits

    full = digits.digits_images
    monkeypatch.setattr(digits, "digits_images", lambda split="train", size=16, channels=3: tuple(
        t[:40] for t in full(split, size, channels)))  # a slice keeps the test fast
    trainer = build_training(entry, out_dir=str(tmp_path / "run"), max_steps=2, batch_size=4)
    x, y = trainer.data
    assert x.shape == (40, channels, 4, 4) and y.max() <= 9
    trainer.config.progress = False
    trainer.config.sample_every = 2
    trainer.task.preview_steps = 2
    rec = trainer.train()
    assert rec["step"] == 2 and math.isfinite(rec["loss"])
    assert (tmp_path / "run" / "checkpoint" / "ema.safetensors").exists()
    assert (tmp_path / "run" / "samples" / "step_0000002.png").exists()


def test_pipeline_with_diffusers_vae_and_bf16_autocast():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        scaling_factor=0.18215).eval()
    pipe = DiTPipeline(tiny_model(), vae, DDPMSampler(num_inference_steps=3))
    img = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert img.shape == (2, 3, 16, 16)
    model = tiny_model()
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([10, 900]), torch.tensor([1, 10])
    with torch.no_grad():
        ref = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, y)
    assert (low.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item() + 1e-3


def test_shipped_dit_digits_loads_by_name():
    from mgen.hub import package_weights_dir
    from mgen.pipelines import load_pipeline

    if not (package_weights_dir() / "dit-digits.safetensors").exists():
        pytest.skip("dit-digits weights are not shipped in this checkout")
    model = DiT.from_pretrained("dit-digits")
    assert model.config.num_classes == 10 and not model.training
    pipe = load_pipeline("dit-digits", num_inference_steps=4)
    assert isinstance(pipe, DiTPipeline) and pipe.num_classes == 10
    img = pipe([3, 7], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert img.shape == (2, 3, 16, 16)


def test_respacing_is_the_official_one():
    # IDDPM/DiT space_timesteps(1000, "21") accumulates the fractional stride 49.95: 499, not numpy's 500
    ts = DDPMSampler(num_inference_steps=21).timestep_list()
    assert ts[:3] == [999, 949, 899] and 499 in ts and 500 not in ts and ts[-1] == 0 and len(ts) == 21
    assert DDPMSampler(num_inference_steps=250).timestep_list()[:3] == [999, 995, 991]
    # "ddim30": the smallest integer stride k with len(range(0, 1000, k)) == 30 is 34 (diffusers' 1000 // 30 = 33)
    d = DDPMSampler(num_inference_steps=30, method="ddim").timestep_list()
    assert d[:3] == [986, 952, 918] and d[-1] == 0 and len(d) == 30
    assert DDPMSampler(num_inference_steps=50, method="ddim").timestep_list()[:2] == [980, 960]
    with pytest.raises(UserError, match="timestep_spacing"):
        DDPMSampler(timestep_spacing="karras").timestep_list()


class _ExactEps(torch.nn.Module):
    """ε-prediction that is exact for one fixed x0: ε = (x_t − sqrt(ᾱ_t)·x0) / sqrt(1 − ᾱ_t)."""

    def __init__(self, x0: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.abar = x0, abar
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.config = DiTConfig(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=1, num_heads=4,
                                num_classes=10, learn_sigma=False)

    def forward(self, x, t, y):
        a = self.abar[t.long()].reshape(-1, 1, 1, 1).float()
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


@pytest.mark.parametrize("steps", [7, 30])
def test_ddim_with_exact_eps_lands_on_x0(steps):
    s = DDPMSampler(num_inference_steps=steps, method="ddim")
    abar = s.make_scheduler(learn_sigma=False).alphas_cumprod
    x0 = torch.linspace(-1, 1, 64).reshape(1, 4, 4, 4)
    out = s.sample(_ExactEps(x0, abar), [3], generator=torch.Generator().manual_seed(0))
    assert (out - x0).abs().max().item() < 1e-4


def test_bench_sample_times_each_attention_backend(tmp_path, capsys):
    import json

    from mgen.cli import main

    assert main(["bench", "sample", "--model", "dit-digits", "--steps", "2", "--batch-size", "2", "--repeats", "1",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "sample.json").read_text())  # mgen.bench.report: {"meta": ..., "rows": [...]}
    rows = {r["attn_backend"]: r for r in rec["rows"]}
    for b in ("sdpa", "math"):
        assert rows[b]["images_per_s"] > 0 and rows[b]["seconds_per_step"] > 0
    assert rec["meta"]["pipeline"] == "DiTPipeline" and rec["meta"]["decoded"] is True
    assert main(["bench", "sample", "--model", "dit-digits", "--attn-backends", "flash9", "--out", str(tmp_path)]) == 2
    assert "flash9" in capsys.readouterr().err


def test_cli_dit_xl_2_missing_weights_and_bad_input(tmp_path, monkeypatch, capsys):
    from mgen.cli import main

    monkeypatch.setenv("MGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["sample", "--model", "dit-xl-2", "--num", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--weights" in err and "DiT-XL-2-256x256.pt" in err
    for bad in (["--steps", "0"], ["--class", "10"], ["--num", "0"]):
        assert main(["sample", "--model", "dit-digits", *bad, "--out", str(tmp_path / "o")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
