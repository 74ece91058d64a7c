"""FID / IS / KID / precision-recall formulas: hand-computed small cases and torch-fidelity's own functions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mgen.errors import UserError
from mgen.eval import fid, isc, kid, prdc


def test_fid_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expect = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # 5 + 1 + 1 + 4
    got = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expect, rel=1e-12)
    assert expect == pytest.approx(11.0)
    assert fid.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-12)


def test_fid_statistics_match_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(50, 16, generator=g)
    f2 = torch.randn(60, 16, generator=g) * 1.3 + 0.2
    ref = fid_statistics_to_metric(fid_features_to_statistics(f1), fid_features_to_statistics(f2), False)
    assert fid.fid_from_features(f1, f2) == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)


def test_fid_stats_npz_roundtrip_and_errors(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    p = fid.save_stats(tmp_path / "ref.npz", mu, sigma)
    m2, s2 = fid.load_stats(p)
    assert np.array_equal(m2, mu) and np.array_equal(s2, sigma)
    np.savez(tmp_path / "bad.npz", mean=mu, cov=sigma)
    with pytest.raises(UserError, match="mu"):
        fid.load_stats(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=np.eye(4))
    with pytest.raises(UserError, match="do not fit"):
        fid.load_stats(tmp_path / "shape.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read"):
        fid.load_stats(tmp_path / "junk.npz")
    with pytest.raises(UserError, match="not found"):
        fid.load_stats(tmp_path / "missing.npz")


def test_inception_score_hand_computed():
    # two splits of two images each; uniform logits give IS = 1
    assert isc.inception_score(torch.zeros(10, 5), splits=2)[0] == pytest.approx(1.0)
    # one-hot-like predictions over C distinct classes in a split: IS = C
    logits = torch.full((4, 4), -1e4)
    logits[torch.arange(4), torch.arange(4)] = 0
    mean, std = isc.inception_score(logits, splits=1, shuffle=False)
    assert mean == pytest.approx(4.0, rel=1e-9) and std == 0.0
    # p(y|x) = softmax(l) with a hand-computed KL for a 2-image, 2-class split
    l = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)
    p = torch.softmax(l, 1).numpy()
    q = p.mean(0)
    expect = math.exp(np.mean([(pi * np.log(pi / q)).sum() for pi in p]))
    assert isc.inception_score(l, splits=1, shuffle=False)[0] == pytest.approx(expect, rel=1e-12)


def test_inception_score_matches_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(103, 1008, generator=g) * 3
    for splits, seed in ((10, 2020), (3, 7)):
        ref = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)
        mean, std = isc.inception_score(logits, splits, seed=seed)
        assert (mean, std) == (ref["inception_score_mean"], ref["inception_score_std"])  # torch-fidelity's own code
    with pytest.raises(UserError, match="at least 10"):
        isc.inception_score(logits[:5], 10)


def _mmd2_by_loops(x, y, d):
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_unbiased_mmd_hand_computed():
    rng = np.random.RandomState(0)
    x = rng.randn(5, 3)
    y = rng.randn(5, 3) + 0.5
    kern = lambda a, b: kid.polynomial_kernel(a, b)  # noqa: E731
    got = kid.mmd2_unbiased(kern(x, x), kern(x, y), kern(y, y))
    assert got == pytest.approx(_mmd2_by_loops(x, y, 3), rel=1e-12)
    # subset_size == n: every subset is the full set (a permutation), so KID is that MMD² with std 0
    mean, std = kid.kernel_inception_distance(x.astype(np.float32), y.astype(np.float32), subsets=3, subset_size=5)
    assert mean == pytest.approx(_mmd2_by_loops(x.astype(np.float32).astype(np.float64),
                                                y.astype(np.float32).astype(np.float64), 3), rel=1e-4)
    assert std == pytest.approx(0.0, abs=1e-5)


def test_kid_matches_torch_fidelity_including_subset_rng():
    from torch_fidelity.metric_kid import kid_features_to_metric

    g = torch.Generator().manual_seed(2)
    f1 = torch.randn(70, 32, generator=g)
    f2 = torch.randn(64, 32, generator=g) + 0.3
    ref = kid_features_to_metric(f1, f2, kid_subsets=7, kid_subset_size=20, verbose=False)
    mean, std = kid.kernel_inception_distance(f1, f2, subsets=7, subset_size=20)
    assert mean == ref["kernel_inception_distance_mean"]  # same subsets, same float32 arithmetic
    assert std == ref["kernel_inception_distance_std"]
    ref = kid_features_to_metric(f1, f2, kid_subsets=3, kid_subset_size=30, rng_seed=5, kid_kernel_poly_degree=2,
                                 kid_kernel_poly_coef0=0.5, verbose=False)
    got = kid.kernel_inception_distance(f1.numpy(), f2, subsets=3, subset_size=30, seed=5, degree=2, coef0=0.5)
    assert got == (ref["kernel_inception_distance_mean"], ref["kernel_inception_distance_std"])
    with pytest.raises(UserError, match="subset size 100"):
        kid.kernel_inception_distance(f1, f2, subset_size=100)


def test_precision_recall_hand_computed():
    # 1-D: real points 0,1,2,3,4 (k=1: every ball has radius 1); fake 0.5, 2.2, 10
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = torch.tensor([[0.5], [2.2], [10.0], [11.0]])
    p, r = prdc.precision_recall(fake, real, k=1)
    assert p == pytest.approx(2 / 4)  # 0.5 and 2.2 lie inside real balls, 10 and 11 do not
    # fake radii (k=1): 0.5→1.7, 2.2→1.7, 10→1, 11→1; real inside a fake ball: 0,1,2,3 (|3-2.2|≤1.7), not 4
    assert r == pytest.approx(4 / 5)


def test_precision_recall_matches_torch_fidelity():
    """Exactly torch-fidelity's numbers, for its default (full matrix) and its save_cpu_ram (tiled) paths."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(3)
    fake = torch.randn(80, 16, generator=g)
    real = torch.randn(90, 16, generator=g) * 1.2 + 0.2
    for k, block in ((3, 10000), (3, 32), (5, 17)):
        got = prdc.precision_recall(fake, real, k, block=block)
        for save_cpu_ram in (False, True):
            ref = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=block,
                                         save_cpu_ram=save_cpu_ram, verbose=False)
            assert got == (ref["precision"], ref["recall"])


def test_evaluate_is_the_function_whatever_was_imported_first():
    """`from mgen.eval import evaluate` must give the function even after the implementation module (or the
    CLI that uses it) was imported first, in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import mgen.commands.eval, mgen.eval.evaluation, mgen.eval.streaming\n"
            "from mgen.eval import evaluate\n"
            "import inspect; assert inspect.isfunction(evaluate), evaluate\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
