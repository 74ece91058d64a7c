"""A diffusers ``DiTPipeline`` folder loads as it is through ``load_pipeline`` / ``DiTPipeline.from_pretrained`` (no
extra arguments), honours its scheduler config, and — from the same latents — gives diffusers' own pipeline's
latents and images (≤ 1e-5). The diffusers side and the noise table come from tests/test_dit_diffusers_parity.py."""

from __future__ import annotations

import pytest
import torch

from test_dit_diffusers_parity import LABELS, SCALE, STEPS, _noise_table, _schedulers, _tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.mark.parametrize("name", ["ddpm-default", "ddim-trailing-v"])
def test_load_pipeline_reads_a_diffusers_dit_folder(tmp_path, monkeypatch, name):
    from diffusers import DiTPipeline as DiffusersDiT
    from diffusers.utils.torch_utils import randn_tensor

    from mgen.pipelines import load_pipeline
    from mgen.pipelines.dit import DiTPipeline

    calls = _noise_table(monkeypatch)
    folder = tmp_path / "pipe"
    _tiny_pipeline(folder, _schedulers()[name])
    ref = DiffusersDiT.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    seen = {}
    decode = ref.vae.decode
    ref.vae.decode = lambda z, *a, **k: (seen.__setitem__("z", z.clone()), decode(z, *a, **k))[1]
    with torch.no_grad():
        images = ref(LABELS, guidance_scale=SCALE, generator=torch.Generator().manual_seed(5),
                     num_inference_steps=STEPS, output_type="pt").images
    want = seen["z"] * ref.vae.config.scaling_factor
    for pipe in (load_pipeline(folder), DiTPipeline.from_pretrained(folder)):
        assert isinstance(pipe, DiTPipeline)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.sampler.clip_sample == ref.scheduler.config.clip_sample
        latents = randn_tensor((len(LABELS), 4, 4, 4), generator=torch.Generator().manual_seed(5))
        calls["n"] = 0
        got = pipe(LABELS, guidance_scale=SCALE, num_inference_steps=STEPS, latents=latents,
                   guidance_channels=None, output_type="latent").images
        assert (got - want).abs().max().item() < 1e-5
        calls["n"] = 0
        ours = pipe(LABELS, guidance_scale=SCALE, num_inference_steps=STEPS, latents=latents, output_type="pt").images
        assert (ours - images).abs().max().item() < 1e-5  # guidance_channels=None is the folder's default
