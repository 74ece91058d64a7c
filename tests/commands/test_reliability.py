"""Hostile and careless input (issues "Reliability" and "Security and crash safety"): every case ends in one line on
stderr and exit status 2 (or a success), never a traceback, never a half-written output. Evaluation, training and
the tokenizer converters have their own cases next to their tests; these are the CLI-wide ones."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from mgen.cli import main
from tests_helpers import official_mar_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def no_temps(folder):
    return [p.name for p in folder.rglob(".tmp-*")] if folder.exists() else []


# -- sizes and numbers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--num", "100000000"], "--force"),
    (["--num", "1000000", "--batch-size", "10"], "--force"),
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--device", "foo"], "--device"),
    (["--device", "cuda:7"], "--device"),
    (["--model", "maskgit-digits", "--cfg", "inf"], "--cfg"),
    (["--model", "maskgit-digits", "--cfg", "nan"], "--cfg"),
    (["--cfg", "nan"], "--cfg"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "0"], "--temperature"),
    (["--steps", "1.5"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--num", "0"], "--num"),
    (["--upscale", "0"], "--upscale"),
    (["--dtype", "fp8"], "--dtype"),
    (["--recap-head-fast-ratio", "nan", "--sampler", "recap"], "--recap-head-fast-ratio"),
    (["--model", "dit-digits", "--head-steps", "3"], "--head-steps does not apply"),
    (["--model", "dit-digits", "--temperature", "0.5"], "--temperature does not apply"),
    (["--model", "dlm-text", "--class", "3", "--prompt", "x"], "does not apply to text models"),
    (["--model", "dlm-text", "--cfg", "-1", "--class", "10", "--num", "0"], ""),
    (["--model", "mar-digits", "--prompt", "hello"], "--prompt"),
])
def test_bad_numbers_and_options(capsys, tmp_path, argv, needle):
    code, _, err = run_cli(capsys, "sample", *argv, "--out", tmp_path / "o")
    assert_one_line(code, err, needle)
    assert not list((tmp_path / "o").glob("*.png")) if (tmp_path / "o").exists() else True


def test_many_samples_need_force_and_are_then_accepted(capsys, tmp_path, monkeypatch):
    import mgen.commands.sample as sample

    monkeypatch.setattr(sample, "MAX_SAMPLES", 2)
    code, _, err = run_cli(capsys, "sample", "--model", "maskgit-digits", "--num", "3", "--out", tmp_path / "o",
                           "--no-progress")
    assert_one_line(code, err, "--force")
    code, _, err = run_cli(capsys, "sample", "--model", "maskgit-digits", "--num", "3", "--force", "--steps", "2",
                           "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err and len(list((tmp_path / "o").glob("0*.png"))) == 3


# -- malformed folders ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, needle", [
    (b"{not json", "invalid JSON"),
    (b"[1, 2, 3]", "expected a JSON object"),
    (bytes(range(256)) * 4, "model_index.json"),
    (b'{"_class_name": "NoSuchPipeline"}', "unknown pipeline class"),
])
def test_malformed_model_index(capsys, tmp_path, content, needle):
    d = tmp_path / "pipe"
    d.mkdir()
    (d / "model_index.json").write_bytes(content)
    for argv in (["sample", "--model", d, "--out", tmp_path / "o"], ["info", d]):
        code, _, err = run_cli(capsys, *argv)
        if argv[0] == "info":
            continue  # info takes registry names only
        assert_one_line(code, err, needle)
    from mgen.errors import UserError
    from mgen.pipelines import load_pipeline

    with pytest.raises(UserError, match=needle.split()[0]):
        load_pipeline(d)


def _tiny_mar_pipe():
    from tests_helpers import tiny_mar_pipeline

    return tiny_mar_pipeline()


def test_pipeline_folder_with_pickled_bin_only(capsys, tmp_path):
    from tests_helpers import tiny_mar_pipeline

    pipe = tiny_mar_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    tr = tmp_path / "pipe" / "transformer"
    torch.save(pipe.transformer.state_dict(), tr / "diffusion_pytorch_model.bin")
    (tr / "diffusion_pytorch_model.safetensors").unlink()
    code, _, err = run_cli(capsys, "sample", "--model", tmp_path / "pipe", "--out", tmp_path / "o")
    assert_one_line(code, err, "safetensors")


def test_folder_that_is_not_a_model(capsys, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    code, _, err = run_cli(capsys, "sample", "--model", tmp_path / "junk", "--out", tmp_path / "o")
    assert_one_line(code, err, "not a model folder")


# -- outputs that cannot be written ---------------------------------------------------------------------------------
def test_sample_out_under_a_regular_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, "sample", "--out", tmp_path / "f" / "o")
    assert_one_line(code, err, "cannot write")


def test_convert_out_under_a_regular_file_and_unknown_option(capsys, tmp_path):
    ckpt, _ = official_mar_checkpoint(tmp_path)
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, "convert", "mar", ckpt, tmp_path / "f" / "out")
    assert_one_line(code, err, "regular file")
    code, _, err = run_cli(capsys, "convert", "mar", ckpt, tmp_path / "out", "--opt", "colour=blue")
    assert_one_line(code, err, "colour")
    code, _, err = run_cli(capsys, "convert", "mar", ckpt, tmp_path / "out", "--opt", "=blue")
    assert_one_line(code, err, "KEY=VALUE")


def test_convert_mar_without_tokenizer_writes_a_loadable_folder(capsys, tmp_path):
    ckpt, _ = official_mar_checkpoint(tmp_path)
    code, out, err = run_cli(capsys, "convert", "mar", ckpt, tmp_path / "out")
    assert code == 0, err
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["transformer"] == ["mgen.models.mar", "MAR"] and index["scheduler"][1] == "SamplerSettings"
    from mgen.pipelines import load_pipeline
    from mgen.tokenizers import load_tokenizer

    pipe = load_pipeline(tmp_path / "out", tokenizer_weights=load_tokenizer("patch-digits"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe([1], num_inference_steps=2, head_steps=2, output_type="pt").images.shape == (1, 3, 16, 16)


def test_convert_force_replaces_only_mgen_output(capsys, tmp_path):
    ckpt, _ = official_mar_checkpoint(tmp_path)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    mode = stat.S_IMODE(other.stat().st_mode)
    code, _, err = run_cli(capsys, "convert", "mar", ckpt, other, "--force")
    assert_one_line(code, err, "did not write")
    assert (other / "thesis.tex").read_text() == "precious" and stat.S_IMODE(other.stat().st_mode) == mode
    assert run_cli(capsys, "convert", "mar", ckpt, tmp_path / "out")[0] == 0
    code, _, err = run_cli(capsys, "convert", "mar", ckpt, tmp_path / "out")
    assert_one_line(code, err, "--force")
    assert run_cli(capsys, "convert", "mar", ckpt, tmp_path / "out", "--force")[0] == 0
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) & 0o755 == 0o755


def test_convert_killed_midway_leaves_nothing_and_reruns(capsys, tmp_path, monkeypatch):
    import safetensors.torch

    ckpt, _ = official_mar_checkpoint(tmp_path)
    real = safetensors.torch.save_file

    def boom(*a, **k):
        raise KeyboardInterrupt  # a kill during the write
    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        from mgen.pipelines.mar import convert_official_checkpoint

        convert_official_checkpoint(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists() and no_temps(tmp_path) == []
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    (tmp_path / ".tmp-out-stale").mkdir()  # what a SIGKILL leaves behind
    (tmp_path / ".tmp-out-stale" / "x.safetensors").write_bytes(b"")
    assert run_cli(capsys, "convert", "mar", ckpt, tmp_path / "out")[0] == 0
    assert no_temps(tmp_path) == [] and (tmp_path / "out" / "model_index.json").is_file()


# -- a full disk ----------------------------------------------------------------------------------------------------
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_sample(capsys, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image.Image, "save", _enospc)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "sample", "--model", "maskgit-digits", "--num", "2", "--steps", "2", "--out", out,
                           "--no-progress")
    assert_one_line(code, err, str(out), "No space left")
    assert no_temps(out) == [] and not list(out.glob("*.png"))


def test_full_disk_during_convert(capsys, tmp_path, monkeypatch):
    import safetensors.torch

    ckpt, _ = official_mar_checkpoint(tmp_path)
    monkeypatch.setattr(safetensors.torch, "save_file", _enospc)
    code, _, err = run_cli(capsys, "convert", "mar", ckpt, tmp_path / "out")
    assert_one_line(code, err, "out", "No space left")
    assert not (tmp_path / "out").exists() and no_temps(tmp_path) == []


# -- crash safety of sampling ---------------------------------------------------------------------------------------
def test_stale_temp_files_are_cleaned_by_the_next_sample(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".tmp-abc.png").write_bytes(b"")
    assert run_cli(capsys, "sample", "--model", "maskgit-digits", "--num", "2", "--steps", "2", "--out", out,
                   "--no-progress")[0] == 0
    assert no_temps(out) == [] and (out / "grid.png").is_file()


def test_sigkill_mid_sample_leaves_no_partial_png(tmp_path):
    out = tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "mgen", "sample", "--model", "maskgit-digits", "--num", "400",
                          "--batch-size", "4", "--steps", "2", "--out", str(out), "--no-progress"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=4)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    from PIL import Image

    for f in out.glob("*.png"):  # every PNG that exists is whole
        with Image.open(f) as im:
            im.load()


# -- batch invariance: the guarantee the README states --------------------------------------------------------------
@pytest.mark.parametrize("model, settings", [("maskgit-digits", {"num_inference_steps": 3}),
                                             ("enat-digits", {"num_inference_steps": 3}),
                                             ("mar-digits", {"num_inference_steps": 2, "head_steps": 4}),
                                             ("dit-digits", {"num_inference_steps": 3}),
                                             ("rae-dit-digits", {"num_inference_steps": 3})])
def test_batch_size_changes_latents_only_by_rounding(model, settings):
    from mgen.pipelines import load_pipeline
    from mgen.samplers.base import per_sample_generators

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    labels = [3, 1, 4, 1]
    streams = lambda: per_sample_generators(torch.Generator().manual_seed(5), len(labels))  # noqa: E731
    one_batch = pipe(labels, generator=streams(), output_type="latent", **settings).images
    gens = streams()
    singles = torch.cat([pipe([lab], generator=[g], output_type="latent", **settings).images
                         for lab, g in zip(labels, gens)])
    if one_batch.dtype in (torch.int64, torch.int32):
        assert torch.equal(one_batch, singles)  # discrete codes: exactly the same
    else:  # float rounding of batch-dependent kernels, amplified along a diffusion chain, stays this small
        assert ((one_batch - singles).abs() <= 1e-3 * (1 + one_batch.abs())).all()
    img = pipe(labels, generator=streams(), output_type="pt", **settings).images
    img1 = torch.cat([pipe([lab], generator=[g], output_type="pt", **settings).images
                      for lab, g in zip(labels, streams())])
    assert float((img - img1).abs().max()) <= 1 / 255  # a PNG differs by at most one grey level


# -- text -------------------------------------------------------------------------------------------------------------
def test_non_utf8_prompt_is_one_line():
    bad = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")  # what Python makes of non-UTF-8 argv bytes
    p = subprocess.run([sys.executable, "-m", "mgen", "sample", "--model", "dlm-text", "--prompt", bad,
                        "--gen-length", "8", "--steps", "4", "--no-progress"], capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2 and "Traceback" not in err and "not valid UTF-8" in err
    assert len(err.strip().splitlines()) == 1


def test_transformers_folder_with_only_a_pickled_bin(capsys, tmp_path):
    """A transformers folder whose weights are a pickled pytorch_model.bin: read through torch.load(weights_only=True)
    (transformers' own safe path), never a traceback."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(tmp_path / "hf")
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    torch.save(sd, tmp_path / "hf" / "pytorch_model.bin")
    (tmp_path / "hf" / "model.safetensors").unlink()
    code, _, err = run_cli(capsys, "sample", "--model", tmp_path / "hf", "--prompt", "hello", "--gen-length", "4",
                           "--steps", "2", "--no-progress")
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1


def test_text_sampling_honours_no_progress(capsys):
    code, out, err = run_cli(capsys, "sample", "--model", "dlm-text", "--prompt", "The with statement", "--gen-length",
                             "8", "--steps", "4", "--no-progress")
    assert code == 0 and out.startswith("The with statement")
    assert "it/s" not in err and "%|" not in err
