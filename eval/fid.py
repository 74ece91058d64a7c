"""Fréchet Inception Distance (Heusel et al., 2017, "GANs Trained by a Two Time-Scale Update Rule…", eq. 6).

``FID = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁Σ₂)^{1/2})``.

The trace of the matrix square root is computed as torch-fidelity 0.4 (``metric_fid.py``, after TTUR's
``fid.py``) does it: ``Tr((Σ₁Σ₂)^{1/2}) = Σᵢ Re √λᵢ(Σ₁Σ₂)`` over the (complex) eigenvalues of the product,
so that rank-deficient covariances (fewer images than 2048 dimensions) give the same number.
Statistics are ``μ = mean``, ``Σ = numpy.cov(rowvar=False)`` (unbiased, N−1), as in torch-fidelity and
the ADM / MAR ``fid_stats`` ``.npz`` files (keys ``mu``, ``sigma``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mgen.errors import UserError


def statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of ``N×D`` features, float64."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise UserError(f"FID needs at least 2 feature vectors, got an array of shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2) (eq. 6 of Heusel et al.)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise UserError(f"FID statistics disagree: mu of shape {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise UserError(f"FID statistics disagree: sigma of shape {sigma1.shape} vs {sigma2.shape} for {d}-d features")
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sigma1.dot(sigma2)).astype(np.complex128)).real)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID between two sets of features (``N×D``)."""
    return frechet_distance(*statistics(features1), *statistics(features2))


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from a reference ``.npz`` (ADM / MAR ``fid_stats`` format: arrays ``mu`` and ``sigma``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"reference statistics not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"mu", "sigma"} <= keys:
                raise UserError(f"{p} has no 'mu'/'sigma' arrays (found: {', '.join(sorted(keys)) or 'nothing'}); "
                                "expected an FID statistics .npz as written by 'mgen eval --save-stats'")
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
    except UserError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
        raise UserError(f"cannot read reference statistics {p}: {e}") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f"{p}: mu of shape {mu.shape} and sigma of shape {sigma.shape} do not fit together")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{p}: mu/sigma contain NaN or infinite values")
    return mu, sigma


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **extra: np.ndarray) -> Path:
    """Write ``mu``/``sigma`` (plus any extra arrays) to an ``.npz`` atomically."""
    import tempfile

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=p.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, mu=np.asarray(mu), sigma=np.asarray(sigma), **extra)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
