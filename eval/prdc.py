"""Improved precision and recall (Kynkäänniemi et al., 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", §2, eq. 1–3), k = 3.

Each set's manifold is the union of balls around its features whose radius is the distance to the
k-th nearest neighbour within the set (the point itself excluded). Precision is the fraction of
generated features inside the real manifold; recall the fraction of real features inside the generated
manifold. The computation is torch-fidelity 0.4's own (``metric_prc.calculate_precision_recall_part``: ``torch.cdist``
in float32 over ``block × block`` tiles, memory ``O(block · N)``), which gives exactly the numbers of its default
``calculate_precision_recall_full`` (the same tiles; ``tests/test_eval_metrics.py``); mgen adds only the one-line
checks of its inputs.
"""

from __future__ import annotations

import torch
from torch_fidelity.metric_prc import calculate_precision_recall_part

from mgen.errors import UserError

DEFAULT_K = 3


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = DEFAULT_K, block: int = 10000) -> tuple[float, float]:
    """``(precision, recall)`` of generated features ``fake`` against real features ``real`` (both ``N×D``)."""
    if fake.dim() != 2 or real.dim() != 2 or fake.shape[1] != real.shape[1]:
        raise UserError(f"precision/recall need two N×D feature sets, got {tuple(fake.shape)} and {tuple(real.shape)}")
    if min(len(fake), len(real)) <= k:
        raise UserError(f"precision/recall with k={k} need more than {k} images on each side, "
                        f"got {len(fake)} and {len(real)}")
    fake, real = fake.detach().float().cpu(), real.detach().float().cpu()
    return calculate_precision_recall_part(fake, real, neighborhood=k, batch_size=block)
