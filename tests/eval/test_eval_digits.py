"""The offline digits metrics: fixed split, the shipped classifier, digits-FID and class accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mgen.errors import UserError, WeightsError
from mgen.eval.digits import (DigitsClassifier, default_weights_path, digits_metrics, digits_split, heldout_images,
                              load_classifier, to_digits_grid)


def test_split_is_fixed_disjoint_and_stratified():
    x_tr, y_tr, x_te, y_te = digits_split()
    assert (len(x_tr), len(x_te)) == (1442, 355)
    assert x_tr.shape[1:] == (1, 8, 8) and float(x_tr.min()) == -1.0 and float(x_tr.max()) == 1.0
    assert torch.bincount(y_te, minlength=10).min() >= 34
    a = digits_split()
    assert torch.equal(a[2], x_te) and torch.equal(a[3], y_te)
    # no held-out image appears in the training split
    tr = {tuple(v.flatten().tolist()) for v in x_tr}
    assert sum(tuple(v.flatten().tolist()) in tr for v in x_te) <= 3  # (load_digits has a few exact duplicates)


def test_shipped_classifier_is_small_and_accurate():
    p = default_weights_path()
    assert p.is_file() and p.stat().st_size <= 1_000_000
    model = load_classifier()
    _, _, x_te, y_te = digits_split()
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    assert acc >= 0.97
    # robust to how a digits model renders its samples: 16 px bilinear RGB, 32 px nearest grey
    x16 = F.interpolate(x_te, size=(16, 16), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x32 = F.interpolate(x_te, size=(32, 32), mode="nearest")
    with torch.no_grad():
        assert (model(x16).argmax(1) == y_te).float().mean().item() >= 0.97
        assert (model(x32).argmax(1) == y_te).float().mean().item() >= 0.97


def test_digits_metrics_separate_data_from_noise():
    x, y = heldout_images((16, 16))
    real = digits_metrics(x, y)
    assert real["digits_fid"] == pytest.approx(0.0, abs=1e-4) and real["digits_accuracy"] >= 0.97
    x_tr, y_tr, _, _ = digits_split()
    train = digits_metrics(F.interpolate(x_tr, size=(16, 16), mode="bilinear", align_corners=False), y_tr)
    g = torch.Generator().manual_seed(0)
    noise = digits_metrics(torch.rand(200, 3, 16, 16, generator=g) * 2 - 1, torch.arange(200) % 10)
    assert 0 < train["digits_fid"] < 10 < noise["digits_fid"]
    assert noise["digits_accuracy"] < 0.5
    wrong = digits_metrics(x, (y + 1) % 10)
    assert wrong["digits_accuracy"] < 0.05
    assert "digits_accuracy" not in digits_metrics(x)


def test_bad_inputs_and_weights(tmp_path):
    with pytest.raises(UserError, match="channels"):
        to_digits_grid(torch.zeros(2, 2, 8, 8))
    with pytest.raises(UserError, match="at least 8"):
        to_digits_grid(torch.zeros(2, 1, 4, 4))
    with pytest.raises(UserError, match="labels"):
        digits_metrics(torch.zeros(4, 1, 8, 8), torch.zeros(3))
    with pytest.raises(WeightsError, match="not found"):
        load_classifier(tmp_path / "none.safetensors")
    from mgen.hub import save_safetensors

    bad = save_safetensors({"w": torch.zeros(3)}, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match="not a digits-classifier"):
        load_classifier(bad)
    assert isinstance(load_classifier(), DigitsClassifier)
