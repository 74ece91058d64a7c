"""Fréchet Inception Distance (Heusel et al., 2017, "GANs Trained by a Two Time-Scale Update Rule…", eq. 6).

``FID = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁Σ₂)^{1/2})``.

``Tr((Σ₁Σ₂)^{1/2}) = Σᵢ √λᵢ(Σ₁Σ₂)``: the eigenvalues of Σ₁Σ₂ are those of the symmetric PSD matrix
``Σ₁^{1/2} Σ₂ Σ₁^{1/2}``, so two symmetric eigendecompositions give them (torch-fidelity 0.4 /
TTUR take a general complex ``eigvals`` of the product; the values agree to float64 rounding, and
eigenvalues ≤ 0 from rank deficiency contribute 0 in both). When one side is given as ``n < D`` feature
vectors ``X`` (centred), ``Σ₁ = XᵀX / (n−1)`` and the non-zero eigenvalues of ``Σ₁Σ₂`` are those of the
small ``n×n`` matrix ``X Σ₂ Xᵀ / (n−1)`` (``eig(AB) = eig(BA)``), which is exact and far cheaper.
Statistics are ``μ = mean``, ``Σ = numpy.cov(rowvar=False)`` (unbiased, N−1), as in torch-fidelity and
the ADM / MAR ``fid_stats`` ``.npz`` files (keys ``mu``, ``sigma``).

Kept hand-written instead of torch-fidelity's ``fid_statistics_to_metric`` (IS, KID and precision/recall do use
torch-fidelity's functions): that one takes ``numpy.linalg.eigvals`` of the non-symmetric 2048×2048 product,
whose complex eigenvalues are rounding noise around the real ones; the symmetric form here gives the same value
to float64 rounding (``tests/test_eval_metrics.py``, ``tests/test_eval_inception.py``), and its ``n×n`` form for
``n < 2048`` samples is exact and much cheaper.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mgen.errors import UserError
from mgen.eval.outputs import write_npz


def statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of ``N×D`` features, float64."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise UserError(f"FID needs at least 2 feature vectors, got an array of shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _check(mu1: np.ndarray, sigma1: np.ndarray | None, mu2: np.ndarray, sigma2: np.ndarray | None) -> None:
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise UserError(f"FID statistics disagree: mu of shape {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    for s in (sigma1, sigma2):
        if s is not None and s.shape != (d, d):
            raise UserError(f"FID statistics disagree: sigma of shape {s.shape} for {d}-d features")


def _sqrt_eigen_sum(sym: torch.Tensor) -> float:
    """Σ √max(λ, 0) over the eigenvalues of a symmetric matrix."""
    sym = (sym + sym.T) / 2
    return float(torch.linalg.eigvalsh(sym).clamp_min(0).sqrt().sum())


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((Σ₁Σ₂)^{1/2})`` through ``Σ₁^{1/2} Σ₂ Σ₁^{1/2}`` (symmetric, float64)."""
    s1 = torch.from_numpy(np.asarray(sigma1, np.float64))
    s2 = torch.from_numpy(np.asarray(sigma2, np.float64))
    w, v = torch.linalg.eigh((s1 + s1.T) / 2)
    root = (v * w.clamp_min(0).sqrt()) @ v.T
    return _sqrt_eigen_sum(root @ s2 @ root)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2) (eq. 6 of Heusel et al.)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    _check(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def _as_f64(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    f = features.detach().cpu() if torch.is_tensor(features) else torch.from_numpy(np.asarray(features))
    if f.dim() != 2 or f.shape[0] < 2:
        raise UserError(f"FID needs at least 2 feature vectors, got an array of shape {tuple(f.shape)}")
    return f.double()


def fid(a: torch.Tensor | np.ndarray | tuple[np.ndarray, np.ndarray],
        b: torch.Tensor | np.ndarray | tuple[np.ndarray, np.ndarray]) -> float:
    """FID between two sides, each ``N×D`` features or a ``(mu, sigma)`` pair.

    With features on a side with fewer vectors than dimensions, the trace term is computed exactly in
    the ``n×n`` space of those vectors (module docstring) instead of the ``D×D`` one.
    """
    sides = []
    for x in (a, b):
        if isinstance(x, tuple):
            mu, sigma = np.asarray(x[0], np.float64), np.asarray(x[1], np.float64)
            sides.append((mu, sigma, None))
        else:
            f = _as_f64(x)
            mu = f.mean(0)
            xc = f - mu
            sigma = np.cov(f.numpy(), rowvar=False)
            sides.append((mu.numpy(), np.atleast_2d(sigma), xc))
    (mu1, s1, x1), (mu2, s2, x2) = sides
    _check(mu1, s1, mu2, s2)
    d = mu1.shape[0]
    diff = mu1 - mu2
    base = float(diff.dot(diff) + np.trace(s1) + np.trace(s2))
    small = [x for x in (x1, x2) if x is not None and x.shape[0] <= d]
    if x1 is not None and x2 is not None and small:
        # Σ₁Σ₂ ~ X₁ᵀ (X₁X₂ᵀ) X₂ : non-zero eigenvalues are those of P Pᵀ / ((n₁−1)(n₂−1)), P = X₁X₂ᵀ
        p = x1 @ x2.T
        m = (p @ p.T) / ((x1.shape[0] - 1) * (x2.shape[0] - 1))
        return base - 2.0 * _sqrt_eigen_sum(m)
    if small:
        x, other = (x1, s2) if (x1 is not None and x1.shape[0] <= d) else (x2, s1)
        m = x @ torch.from_numpy(other) @ x.T / (x.shape[0] - 1)
        return base - 2.0 * _sqrt_eigen_sum(m)
    return base - 2.0 * trace_sqrt_product(s1, s2)


def fid_from_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID between two sets of features (``N×D``)."""
    return fid(features1, features2)


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
    """Write ``mu``/``sigma`` (plus any extra arrays) to an ``.npz`` atomically; a fault (a full disk, a parent that
    is a file) is one line naming ``path`` and leaves no file behind."""
    return write_npz(path, mu=np.asarray(mu), sigma=np.asarray(sigma), **extra)
