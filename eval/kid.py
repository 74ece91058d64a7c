"""Kernel Inception Distance (Bińkowski et al., 2018, "Demystifying MMD GANs", §4 / eq. 4).

KID is the unbiased estimator of the squared MMD between the feature distributions, with the cubic
polynomial kernel ``k(x, y) = (xᵀy / d + 1)³``, averaged over ``subsets`` random subsets of
``subset_size`` features from each side:

``MMD²_u = Σ_{i≠j} k(xᵢ,xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ) / (m(m−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ) / m²``.

The subsets are drawn exactly as torch-fidelity 0.4 (``metric_kid.py``) draws them — one
``numpy.random.RandomState(seed)`` (seed 2020), per subset first ``choice(n₁, m, replace=False)`` for the
first input then for the second — and the arithmetic is float32 numpy: the computation is torch-fidelity's
own ``kid_features_to_metric`` (identical numbers, ``tests/test_eval_metrics.py``); mgen adds only the one-line
checks of its inputs. Reported: mean and population std over the subsets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_kid import kernel_poly, kid_features_to_metric, mmd2

from mgen.errors import UserError

DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000
DEFAULT_SEED = 2020


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """``(γ xᵀy + c)^degree`` with ``γ = 1 / d`` by default (torch-fidelity's ``kernel_poly``)."""
    return kernel_poly(x, y, kid_kernel_poly_degree=degree, kid_kernel_poly_gamma=gamma, kid_kernel_poly_coef0=coef0)


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """The unbiased MMD² estimate from the three ``m×m`` kernel matrices (torch-fidelity's ``mmd2``)."""
    m = k_xx.shape[0]
    if m < 2 or k_xx.shape != (m, m) or k_xy.shape != (m, m) or k_yy.shape != (m, m):
        raise UserError(f"MMD needs square kernel matrices of the same size ≥ 2, got {k_xx.shape}, {k_xy.shape}, {k_yy.shape}")
    return float(mmd2(k_xx, k_xy, k_yy, mmd_est="unbiased"))


def _as_f32(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = x.detach().cpu() if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))
    return t.float()


def kernel_inception_distance(features1: torch.Tensor | np.ndarray, features2: torch.Tensor | np.ndarray,
                              subsets: int = DEFAULT_SUBSETS, subset_size: int = DEFAULT_SUBSET_SIZE,
                              seed: int = DEFAULT_SEED, degree: int = 3, gamma: float | None = None,
                              coef0: float = 1.0) -> tuple[float, float]:
    """``(mean, std)`` of KID between two ``N×D`` feature sets over ``subsets`` random subsets."""
    f1, f2 = _as_f32(features1), _as_f32(features2)
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise UserError(f"KID needs two N×D feature sets of the same D, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    n1, n2 = len(f1), len(f2)
    if subset_size < 2:
        raise UserError(f"KID subset size must be at least 2, got {subset_size}")
    if n1 < subset_size or n2 < subset_size:
        raise UserError(f"KID subset size {subset_size} is larger than the number of images "
                        f"({n1} and {n2}); lower it with kid_subset_size / --kid-subset-size")
    if subsets < 1:
        raise UserError(f"KID needs at least one subset, got {subsets}")
    out = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=seed,
                                 kid_kernel="poly", kid_kernel_poly_degree=degree, kid_kernel_poly_gamma=gamma,
                                 kid_kernel_poly_coef0=coef0, verbose=False)
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]
