"""Inception Score (Salimans et al., 2016, "Improved Techniques for Training GANs", §4).

``IS = exp(E_x KL(p(y|x) ‖ p(y)))``, computed on ``splits`` equal chunks and reported as mean ± std
over the chunks. Conventions follow torch-fidelity 0.4 (``metric_isc.py``) so the numbers match:
the logits are the ``logits_unbiased`` layer (1008 classes, no bias), the samples are shuffled first
with ``numpy.random.RandomState(seed).permutation`` (seed 2020), chunk ``i`` is
``[i·N // splits, (i+1)·N // splits)``, arithmetic is float64, and the std is the population std.
The computation is torch-fidelity's own ``isc_features_to_metric`` (identical numbers, ``tests/test_eval_metrics.py``);
mgen adds only the one-line checks of its inputs.
"""

from __future__ import annotations

import torch
from torch_fidelity.metric_isc import isc_features_to_metric

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
    out = isc_features_to_metric(logits.detach().cpu(), splits=splits, shuffle=shuffle, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]
