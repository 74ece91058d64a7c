"""Improved precision and recall (Kynkäänniemi et al., 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", §2, eq. 1–3), k = 3.

Each set's manifold is the union of balls around its features whose radius is the distance to the
k-th nearest neighbour within the set (the point itself excluded). Precision is the fraction of
generated features inside the real manifold; recall the fraction of real features inside the generated
manifold. Distances are ``torch.cdist`` in float32 like torch-fidelity 0.4 (``metric_prc.py``), computed
in blocks so memory stays ``O(block · N)``.
"""

from __future__ import annotations

import torch

from mgen.errors import UserError

DEFAULT_K = 3


def _knn_radii(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row (the (k+1)-th value counts itself)."""
    return torch.cat([torch.cdist(xb, x).kthvalue(k + 1, dim=1).values for xb in x.split(block)])


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    """For each point, whether it lies within any ball (centre, radius)."""
    return torch.cat([(torch.cdist(pb, centres) <= radii[None]).any(dim=1) for pb in points.split(block)])


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = DEFAULT_K, block: int = 10000) -> tuple[float, float]:
    """``(precision, recall)`` of generated features ``fake`` against real features ``real`` (both ``N×D``)."""
    if fake.dim() != 2 or real.dim() != 2 or fake.shape[1] != real.shape[1]:
        raise UserError(f"precision/recall need two N×D feature sets, got {tuple(fake.shape)} and {tuple(real.shape)}")
    if min(len(fake), len(real)) <= k:
        raise UserError(f"precision/recall with k={k} need more than {k} images on each side, "
                        f"got {len(fake)} and {len(real)}")
    fake, real = fake.detach().float().cpu(), real.detach().float().cpu()
    r_fake, r_real = _knn_radii(fake, k, block), _knn_radii(real, k, block)
    precision = _inside(fake, real, r_real, block).float().mean().item()
    recall = _inside(real, fake, r_fake, block).float().mean().item()
    return precision, recall
