"""MAR training through the shared trainer: the task registers, the loss falls, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch

from mgen import registry
from mgen.train.tasks import build_training

ARCH = dict(img_size=16, vae_stride=4, patch_size=1, vae_embed_dim=16, encoder_embed_dim=32, encoder_depth=1,
            encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, class_num=10,
            buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps=10, diffusion_batch_mul=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def entry(**train):
    t = dict(data="digits", lr=3e-3, warmup_steps=2, ema_decay=0.9, grad_clip=3.0, batch_size=16, max_steps=40,
             checkpoint_every=10, log_every=10, progress=False, seed=0, grid={"num_steps": 2, "head_steps": 2})
    t.update(train)
    return registry.parse_entry({"name": "mar-test", "family": "mar", "tokenizer": "patch-digits", "arch": ARCH,
                                 "train": t})


def test_mar_digits_config_builds():
    e = registry.get("mar-digits")
    tr = build_training(e, out_dir=None, max_steps=1)
    latents, labels = tr.data
    assert latents.shape[1:] == (16, 4, 4) and labels.max() == 9
    assert abs(float(latents.mean())) < 0.1 and 0.8 < float(latents.std()) < 1.2  # tokenizer scaling
    n = sum(p.numel() for p in tr.unwrapped.parameters())
    assert n * 4 < 10e6  # the shipped float32 weights stay under 10 MB


def test_loss_falls_and_grid(tmp_path):
    tr = build_training(entry(), out_dir=str(tmp_path / "run"), max_steps=40)
    tr.train(resume=False)
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logs[-1]["step"] == 40
    assert logs[-1]["loss"] < 0.8 * logs[0]["loss"]
    path = tr.write_sample_grid()
    assert path is not None and path.exists()


def test_exact_resume(tmp_path):
    a = build_training(entry(), out_dir=str(tmp_path / "a"), max_steps=20)
    a.train(resume=False)
    b = build_training(entry(), out_dir=str(tmp_path / "b"), max_steps=20)
    b.train(resume=False, stop_after=10)
    c = build_training(entry(), out_dir=str(tmp_path / "b"), max_steps=20)
    c.train(resume=True)
    assert c.step == 20
    for k, v in a.unwrapped.state_dict().items():
        assert torch.equal(v, c.unwrapped.state_dict()[k]), k
    for k, v in a.ema.state_dict().items():
        assert torch.equal(v, c.ema.state_dict()[k]), k
