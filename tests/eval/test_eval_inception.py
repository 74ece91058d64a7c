"""The evaluator against torch-fidelity itself: same random-init Inception file, same digits folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval_common import digits_folders, inception_weights, small_inception, write_digits_folder  # noqa: F401
from mgen.cli import main
from mgen.eval import evaluate
from mgen.eval.inception import InceptionFeatures


def _tf_metrics(fake, real, weights, **kw):
    import torch_fidelity

    return torch_fidelity.calculate_metrics(input1=str(fake), input2=str(real) if real else None, cuda=False,
                                           feature_extractor_weights_path=str(weights), verbose=False,
                                           save_cpu_ram=True, cache=False, **kw)


def test_fid_is_kid_pr_equal_torch_fidelity(small_inception, inception_weights, digits_folders):
    fake, real = digits_folders
    r = evaluate(fake, real, inception_weights=inception_weights, metrics=("fid", "is", "kid", "pr"),
                 kid_subset_size=20, device="cpu")
    ref = _tf_metrics(fake, real, inception_weights, isc=True, fid=True, kid=True, prc=True,
                      feature_extractor="inception-v3-compat", kid_subset_size=20)
    assert set(r) >= {"fid", "is", "is_std", "kid", "kid_std", "precision", "recall"}
    assert r["fid"] > 1.0 and r["is"] > 1.0  # the random network separates the two folders
    assert r["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    assert r["is"] == pytest.approx(ref["inception_score_mean"], rel=1e-3)
    assert r["is_std"] == pytest.approx(ref["inception_score_std"], rel=1e-2)
    assert r["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-3)
    assert r["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-2)
    assert r["precision"] == pytest.approx(ref["precision"], abs=1 / 30 + 1e-6)
    assert r["recall"] == pytest.approx(ref["recall"], abs=1 / 30 + 1e-6)


def test_npz_reference_gives_the_same_fid_and_cli_json(small_inception, inception_weights, digits_folders, tmp_path,
                                                       capsys):
    fake, real = digits_folders
    stats = tmp_path / "real.npz"
    out = tmp_path / "r.json"
    assert main(["eval", "--fake", str(fake), "--real", str(real), "--inception-weights", str(inception_weights),
                 "--metrics", "fid", "--save-stats", str(stats), "--json", str(out), "--no-progress"]) == 0
    with np.load(stats) as z:
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048)
    by_folder = json.loads(out.read_text())
    assert by_folder["versions"]["torch_fidelity"] and by_folder["inception_weights"]["sha256"]
    by_npz = evaluate(fake, stats, inception_weights=inception_weights, metrics=("fid",), device="cpu")
    assert by_npz["fid"] == pytest.approx(by_folder["fid"], rel=1e-6)
    with pytest.raises(Exception, match="KID needs real images"):
        evaluate(fake, stats, inception_weights=inception_weights, metrics=("fid", "kid"), device="cpu")


def test_tensor_and_batches_inputs_equal_the_png_folder(small_inception, inception_weights, tmp_path):
    from mgen.eval.digits import heldout_images

    x, _ = heldout_images((16, 16))
    x = x[:8].repeat(1, 3, 1, 1)
    folder = tmp_path / "pngs"
    from mgen.images import save_png, to_pil

    for i, im in enumerate(to_pil(x)):
        save_png(im, folder / f"{i:03d}.png")
    ext = InceptionFeatures(inception_weights, "cpu")
    kw = dict(metrics=("is",), isc_splits=2, extractor=ext, return_features=True, batch_size=5)
    a = evaluate(folder, **kw)["features"]["fake"]
    b = evaluate(x, **kw)["features"]["fake"]  # floats in [-1, 1], quantised like the PNG writer
    c = evaluate(iter([x[:3], x[3:4], x[4:]]), **kw)["features"]["fake"]
    for k in ("2048", "logits_unbiased"):
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k])


@pytest.mark.slow
def test_full_299_pipeline_matches_torch_fidelity(tmp_path):
    """The real input size: IS runs through every layer (logits of the 2048-d pool), compared with torch-fidelity."""
    from mgen.eval.inception import random_inception_weights

    weights = random_inception_weights(tmp_path / "w299.pth", seed=1, calibration_size=299)
    fake = write_digits_folder(tmp_path / "f", "train", 4)
    r = evaluate(fake, inception_weights=weights, metrics=("is",), isc_splits=2, device="cpu")
    ref = _tf_metrics(fake, None, weights, isc=True, isc_splits=2)
    assert np.isfinite(r["is"]) and r["is"] > 1.0
    assert r["is"] == pytest.approx(ref["inception_score_mean"], rel=1e-3)


def test_missing_inception_weights_is_one_line_exit_2(run_mgen, digits_folders, tmp_path):
    fake, real = digits_folders
    out = tmp_path / "r.json"
    p = run_mgen("eval", "--fake", str(fake), "--real", str(real), "--json", str(out), "--kid-subset-size", "10",
                 env={"TORCH_HOME": str(tmp_path / "th")})
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--inception-weights" in lines[0] and "Traceback" not in p.stderr
    assert not out.exists()
