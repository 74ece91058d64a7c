"""Kernel Inception Distance (Bińkowski et al., 2018, "Demystifying MMD GANs", §4 / eq. 4).

KID is the unbiased estimator of the squared MMD between the feature distributions, with the cubic
polynomial kernel ``k(x, y) = (xᵀy / d + 1)³``, averaged over ``subsets`` random subsets of
``subset_size`` features from each side:

``MMD²_u = Σ_{i≠j} k(xᵢ,xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ) / (m(m−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ) / m²``.

The subsets are drawn exactly as torch-fidelity 0.4 (``metric_kid.py``) draws them — one
``numpy.random.RandomState(seed)`` (seed 2020), per subset first ``choice(n₁, m, replace=False)`` for the
first input then for the second — and the arithmetic is float32 numpy in the same order, so the values
agree to rounding. Reported: mean and population std over the subsets.
"""

from __future__ import annotations

import numpy as np
import torch

from mgen.errors import UserError

DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000
DEFAULT_SEED = 2020


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """``(γ xᵀy + c)^degree`` with ``γ = 1 / d`` by default."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (np.matmul(x, y.T) * g + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """The unbiased MMD² estimate from the three ``m×m`` kernel matrices (diagonals of k_xx, k_yy dropped)."""
    m = k_xx.shape[0]
    if m < 2 or k_xx.shape != (m, m) or k_xy.shape != (m, m) or k_yy.shape != (m, m):
        raise UserError(f"MMD needs square kernel matrices of the same size ≥ 2, got {k_xx.shape}, {k_xy.shape}, {k_yy.shape}")
    off_xx = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
    off_yy = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
    cross = k_xy.sum(axis=0).sum()
    return (off_xx + off_yy) / (m * (m - 1)) - 2 * cross / (m * m)


def kernel_inception_distance(features1: torch.Tensor | np.ndarray, features2: torch.Tensor | np.ndarray,
                              subsets: int = DEFAULT_SUBSETS, subset_size: int = DEFAULT_SUBSET_SIZE,
                              seed: int = DEFAULT_SEED, degree: int = 3, gamma: float | None = None,
                              coef0: float = 1.0) -> tuple[float, float]:
    """``(mean, std)`` of KID between two ``N×D`` feature sets over ``subsets`` random subsets."""
    f1 = features1.detach().cpu().float().numpy() if torch.is_tensor(features1) else np.asarray(features1, np.float32)
    f2 = features2.detach().cpu().float().numpy() if torch.is_tensor(features2) else np.asarray(features2, np.float32)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise UserError(f"KID needs two N×D feature sets of the same D, got {f1.shape} and {f2.shape}")
    n1, n2 = len(f1), len(f2)
    if subset_size < 2:
        raise UserError(f"KID subset size must be at least 2, got {subset_size}")
    if n1 < subset_size or n2 < subset_size:
        raise UserError(f"KID subset size {subset_size} is larger than the number of images "
                        f"({n1} and {n2}); lower it with kid_subset_size / --kid-subset-size")
    if subsets < 1:
        raise UserError(f"KID needs at least one subset, got {subsets}")
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for s in range(subsets):
        a = f1[rng.choice(n1, subset_size, replace=False)]
        b = f2[rng.choice(n2, subset_size, replace=False)]
        kern = lambda u, v: polynomial_kernel(u, v, degree, gamma, coef0)  # noqa: E731
        values[s] = mmd2_unbiased(kern(a, a), kern(a, b), kern(b, b))
    return float(np.mean(values)), float(np.std(values))
