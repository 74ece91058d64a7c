"""Inception Score (Salimans et al., 2016, "Improved Techniques for Training GANs", §4).

``IS = exp(E_x KL(p(y|x) ‖ p(y)))``, computed on ``splits`` equal chunks and reported as mean ± std
over the chunks. Conventions follow torch-fidelity 0.4 (``metric_isc.py``) so the numbers match:
the logits are the ``logits_unbiased`` layer (1008 classes, no bias), the samples are shuffled first
with ``numpy.random.RandomState(seed).permutation`` (seed 2020), chunk ``i`` is
``[i·N // splits, (i+1)·N // splits)``, arithmetic is float64, and the std is the population std.
"""

from __future__ import annotations

import numpy as np
import torch

from mgen.errors import UserError

DEFAULT_SPLITS = 10
DEFAULT_SEED = 2020  # torch-fidelity's rng_seed default


def inception_score(logits: torch.Tensor, splits: int = DEFAULT_SPLITS, shuffle: bool = True,
                    seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """``(mean, std)`` of the Inception Score of ``N×C`` logits over ``splits`` chunks."""
    if logits.dim() != 2:
        raise UserError(f"Inception Score needs N×C logits, got shape {tuple(logits.shape)}")
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise UserError(f"Inception Score with {splits} splits needs at least {splits} images, got {n}")
    x = logits.detach().cpu()
    if shuffle:
        x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    x = x.double()
    log_p = x.log_softmax(dim=1)
    p = log_p.exp()
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_i, log_p_i = p[lo:hi], log_p[lo:hi]
        log_marginal = p_i.mean(dim=0, keepdim=True).log()
        kl = (p_i * (log_p_i - log_marginal)).sum(dim=1)
        scores.append(kl.mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))
