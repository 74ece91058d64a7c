"""`mgen eval`: bad input ends in one line and exit 2 with no JSON written; `--model` streaming end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eval_common import inception_weights, small_inception, write_digits_folder  # noqa: F401
from mgen.cli import main


def _png(path, size=(16, 16), mode="RGB", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


@pytest.fixture
def good_real(tmp_path):
    return write_digits_folder(tmp_path / "real", "test", 4)


def _bad_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "sizes" / "a.png", (16, 16))
    _png(tmp_path / "sizes" / "b.png", (32, 32))
    _png(tmp_path / "greyrgb" / "a.png", mode="L")
    _png(tmp_path / "greyrgb" / "b.png", mode="RGB")
    _png(tmp_path / "grey" / "a.png", mode="L")
    _png(tmp_path / "grey" / "b.png", mode="L", value=200)
    _png(tmp_path / "corrupt" / "a.png")
    (tmp_path / "corrupt" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = Image.new("RGB", (16, 16))
    good.save(tmp_path / "t.png")
    _png(tmp_path / "trunc" / "a.png")
    (tmp_path / "trunc" / "b.png").write_bytes((tmp_path / "t.png").read_bytes()[:40])
    np.savez(tmp_path / "nomu.npz", mean=np.zeros(2048), cov=np.eye(2048))
    return {
        "empty folder": (["--fake", str(tmp_path / "empty")], "no images"),
        "mixed sizes": (["--fake", str(tmp_path / "sizes")], "different sizes"),
        "grey and RGB mixed": (["--fake", str(tmp_path / "greyrgb")], "grey and colour"),
        "grey vs RGB": (["--fake", str(tmp_path / "grey")], "grey but real images are colour"),
        "corrupt png": (["--fake", str(tmp_path / "corrupt")], "cannot read image"),
        "truncated png": (["--fake", str(tmp_path / "trunc")], "cannot read image"),
        "npz without mu/sigma": (["--fake", str(tmp_path / "sizes" / ".."), "--real", str(tmp_path / "nomu.npz")],
                                 "no 'mu'/'sigma'"),
        "missing folder": (["--fake", str(tmp_path / "nope")], "no such folder"),
    }


@pytest.mark.parametrize("case", ["empty folder", "mixed sizes", "grey and RGB mixed", "grey vs RGB", "corrupt png",
                                  "truncated png", "npz without mu/sigma", "missing folder"])
def test_bad_inputs_exit_2_one_line_no_json(case, tmp_path, good_real, inception_weights, small_inception, capsys):
    argv, message = _bad_cases(tmp_path)[case]
    if "--real" not in argv:
        argv += ["--real", str(good_real)]
    if case == "npz without mu/sigma":
        argv[1] = str(good_real)
    out = tmp_path / "out" / "r.json"
    rc = main(["eval", *argv, "--inception-weights", str(inception_weights), "--json", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists() and not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("argv, message", [
    (["--model", "mar-digits", "--num-samples", "-5"], "--num-samples must be positive"),
    (["--model", "mar-digits", "--num-samples", "0"], "--num-samples must be positive"),
    (["--fake", "x", "--model", "mar-digits"], "not both"),
    (["--fake", "x", "--num-samples", "3"], "only applies with --model"),
    (["--fake", "x", "--metrics", "fid,lpips"], "unknown metric"),
    (["--fake", "x", "--kid-subset-size", "0"], "--kid-subset-size must be positive"),
    ([], "nothing to evaluate"),
])
def test_bad_arguments_exit_2(argv, message, run_mgen, tmp_path):
    out = tmp_path / "r.json"
    p = run_mgen("eval", *argv, "--json", str(out))
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and message in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


def test_grey_folders_are_accepted_like_torch_fidelity(tmp_path, inception_weights, small_inception, capsys):
    fake = write_digits_folder(tmp_path / "f", "train", 4, channels=1)
    real = write_digits_folder(tmp_path / "r", "test", 4, channels=1)
    assert Image.open(next(fake.iterdir())).mode == "L"
    rc = main(["eval", "--fake", str(fake), "--real", str(real), "--inception-weights", str(inception_weights),
               "--metrics", "fid", "--no-progress"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["fid"] > 0


def _random_mar_digits(path):
    from mgen import registry
    from mgen.models.mar import MAR, MARConfig

    torch.manual_seed(0)
    return MAR.from_config_obj(MARConfig.from_mapping(registry.get("mar-digits").arch)).save_safetensors(path)


def test_model_streaming_digits_metrics_and_resume(tmp_path, capsys):
    torch.set_num_threads(1)
    weights = _random_mar_digits(tmp_path / "mar.safetensors")
    args = ["eval", "--model", "mar-digits", "--weights", str(weights), "--num-samples", "40", "--steps", "2",
            "--batch-size", "8", "--shard-size", "16", "--work-dir", str(tmp_path / "work"), "--no-progress"]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert {"digits_fid", "digits_accuracy"} <= set(a) and a["num_samples"] == 40 and a["shard_size"] == 16
    assert a["sampler"]["steps"] == 2 and a["seed"] == 0 and a["versions"]["torch_fidelity"]
    # a crash that lost shard 1: the rerun redoes only that shard and reports the same numbers
    (tmp_path / "work" / "shard-000001.safetensors").unlink()
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["digits_fid"] == pytest.approx(a["digits_fid"], rel=1e-9) and b["digits_accuracy"] == a["digits_accuracy"]
    # other settings in the same work dir are refused
    capsys.readouterr()
    assert main([*args[:-3], "--seed", "1", "--work-dir", str(tmp_path / "work"), "--no-progress"]) == 2
    assert "another run" in capsys.readouterr().err


def test_too_few_images_for_kid_fails_before_extraction(tmp_path, good_real, capsys):
    out = tmp_path / "r.json"
    # no Inception file is needed: the counts are checked first
    rc = main(["eval", "--fake", str(good_real), "--real", str(good_real), "--inception-weights",
               str(tmp_path / "missing.pth"), "--json", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "KID subset size 1000" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
