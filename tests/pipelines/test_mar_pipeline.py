"""MARPipeline, the patch tokenizer, `mgen sample` / `mgen bench sample` / `mgen convert mar` on tiny random weights."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from mgen.cli import main
from mgen.models.mar import MAR
from mgen.pipelines.mar import MARPipeline
from mgen.tokenizers.patch import PatchTokenizer

ARCH = dict(img_size=16, vae_stride=4, patch_size=1, vae_embed_dim=16, encoder_embed_dim=32, encoder_depth=1,
            encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, class_num=10,
            buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps=10, diffusion_batch_mul=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny_pipe(seed: int = 0) -> MARPipeline:
    from tests_helpers import tiny_mar_pipeline

    return tiny_mar_pipeline(seed)


def test_patch_tokenizer_round_trip(tmp_path):
    tok = PatchTokenizer(patch_size=4, channels=1, image_size=16, scaling_factor=1.5, shift=-0.4)
    grey = torch.rand(2, 1, 16, 16) * 2 - 1
    z = tok.encode(grey.expand(2, 3, 16, 16))
    assert z.shape == (2, 16, 4, 4)
    assert torch.allclose(z[0, :, 1, 2], grey[0, 0, 4:8, 8:12].reshape(-1))  # one patch, row-major pixels
    assert torch.allclose(tok.decode(z), grey.expand(2, 3, 16, 16))
    assert torch.allclose(tok.from_model(tok.to_model(z)), z, atol=1e-6)
    tok.save_pretrained(tmp_path / "tok")
    again = PatchTokenizer.from_pretrained(tmp_path / "tok")
    assert (again.patch_size, again.scaling_factor, again.shift) == (4, 1.5, -0.4)
    named = PatchTokenizer.from_pretrained("patch-digits")
    assert named.latent_channels == 16


def test_pipeline_outputs_and_determinism():
    pipe = tiny_pipe()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    pt = pipe([1, 2, 3], generator=g(), output_type="pt").images
    assert pt.shape == (3, 3, 16, 16) and pt.min() >= 0 and pt.max() <= 1
    npy = pipe([1, 2, 3], generator=g(), output_type="np").images
    assert npy.shape == (3, 16, 16, 3) and np.allclose(npy, pt.permute(0, 2, 3, 1).numpy())
    pil = pipe(class_labels=[1, 2, 3], num_inference_steps=3, guidance_scale=2.0, guidance_schedule="linear",
               temperature=1.0, generator=g(), output_type="pil", return_dict=True).images
    assert len(pil) == 3 and pil[0].size == (16, 16)
    (tup,) = pipe([1, 2, 3], generator=g(), output_type="pt", return_dict=False)
    assert torch.equal(tup, pt)
    assert not torch.equal(pipe([1, 2, 3], generator=torch.Generator().manual_seed(1), output_type="pt").images, pt)


def test_pipeline_save_load_and_registry(tmp_path):
    from mgen.pipelines import load_pipeline

    pipe = tiny_pipe()
    ref = pipe([4, 5], generator=torch.Generator().manual_seed(3), output_type="pt").images
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "MARPipeline"
    assert (tmp_path / "pipe" / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    for loaded in (MARPipeline.from_pretrained(tmp_path / "pipe"), load_pipeline(str(tmp_path / "pipe"))):
        out = loaded([4, 5], generator=torch.Generator().manual_seed(3), output_type="pt").images
        assert torch.equal(out, ref)


def run_cli(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_sample_cli_writes_grid_and_images(tmp_path, capsys):
    tiny_pipe().save_pretrained(tmp_path / "pipe")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "sample", "--model", str(tmp_path / "pipe"), "--num", "3", "--class", "7",
                                "--steps", "2", "--head-steps", "2", "--out", str(out), "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert (out / "grid.png").exists() and sorted(p.name for p in out.glob("0*.png")) == ["0000.png", "0001.png", "0002.png"]
    assert stdout.count("mgen sample: model=") == 1 and "steps" not in err


@pytest.mark.parametrize("argv, message", [
    (["--model", "no-such-model"], "unknown model"),
    (["--steps", "0"], "--steps"),
    (["--steps", "1001"], "--steps"),
    (["--class", "10"], "out of range"),
    (["--cfg", "-0.5"], "--cfg"),
    (["--out", "/proc/mgen-cannot-write"], "cannot write"),
    (["--model", "mar-b", "--class", "1000"], "out of range"),
    (["--model", "mar-b", "--steps", "1001"], "--steps"),
    (["--model", "mar-b", "--cfg", "-1"], "--cfg"),
])
def test_sample_bad_input_one_line(capsys, argv, message):
    code, _, err = run_cli(capsys, "sample", *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_sample_mar_b_names_missing_files_and_rejects_other_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MGEN_HOME", str(tmp_path / "home"))
    code, _, err = run_cli(capsys, "sample", "--model", "mar-b", "--steps", "16", "--cfg", "2.9", "--class", "207",
                           "--num", "16", "--seed", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "checkpoint-last.pth" in err and "kl16.ckpt" in err and "--tokenizer-weights" in err
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": tiny_pipe().transformer.state_dict(), "model_ema": tiny_pipe().transformer.state_dict(),
                "args": argparse.Namespace(model="mar_base", img_size=16, vae_stride=4, buffer_size=2, diffloss_d=1,
                                           diffloss_w=32, class_num=10, vae_embed_dim=16)}, ckpt)
    kl = tmp_path / "kl16.ckpt"
    kl.write_bytes(b"x")
    code, _, err = run_cli(capsys, "sample", "--model", "mar-b", "--weights", str(ckpt), "--tokenizer-weights", str(kl),
                           "--out", str(tmp_path / "o"))
    assert code == 2 and "another MAR config" in err and len(err.strip().splitlines()) == 1


def test_bench_sample_writes_json_and_table(tmp_path, capsys):
    tiny_pipe().save_pretrained(tmp_path / "pipe")
    code, stdout, err = run_cli(capsys, "bench", "sample", "--model", str(tmp_path / "pipe"), "--steps", "2",
                                "--batch-size", "2", "--repeats", "1", "--head-steps", "2", "--device", "cpu",
                                "--modes", "fp32", "bf16", "--out", str(tmp_path / "bench"))
    assert code == 0, err
    rec = json.loads((tmp_path / "bench" / "sample.json").read_text())
    assert [r["mode"] for r in rec["rows"]] == ["fp32", "bf16"]
    for row in rec["rows"]:
        for key in ("images_per_s", "s_per_image", "transformer_s_per_image", "head_s_per_image"):
            assert row[key] > 0, key
        assert row["peak_memory_mb"] >= 0
    assert (tmp_path / "bench" / "sample.md").read_text().startswith("# mgen bench sample")


def test_convert_official_checkpoint_to_pipeline(tmp_path, capsys):
    from mgen.pipelines import load_pipeline

    pipe = tiny_pipe()
    raw = MAR(**ARCH)
    ckpt = tmp_path / "checkpoint-last.pth"
    torch.save({"model": raw.state_dict(), "model_ema": pipe.transformer.state_dict(), "epoch": 1,
                "args": argparse.Namespace(model="mar_tiny", encoder_num_heads=2, decoder_num_heads=2, img_size=16,
                                           vae_stride=4, patch_size=1, vae_embed_dim=16, class_num=10, buffer_size=2,
                                           diffloss_d=1, diffloss_w=32, num_sampling_steps="10")}, ckpt)
    tokdir = tmp_path / "tok"
    pipe.tokenizer.save_pretrained(tokdir)
    code, _, err = run_cli(capsys, "convert", "mar", str(ckpt), str(tmp_path / "conv"), "--opt", f"tokenizer={tokdir}")
    assert code == 0, err
    conv = load_pipeline(str(tmp_path / "conv"))
    for k, v in conv.transformer.state_dict().items():  # the EMA weights, by default
        assert torch.equal(v, pipe.transformer.state_dict()[k]), k
    a = conv([1], num_inference_steps=2, head_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = pipe([1], num_inference_steps=2, head_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.allclose(a, b, atol=1e-6)
