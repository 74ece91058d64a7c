"""Offline digits metrics: a small CNN classifier on ``sklearn.datasets.load_digits`` that judges samples.

Two numbers judge a class-conditional digits model without any download:

* **class accuracy**: the fraction of samples drawn for class ``c`` that the classifier labels ``c``
  (the "classification accuracy score" idea of Ravuri & Vinyals, 2019, reduced to a fixed classifier);
* **digits-FID**: the Fréchet distance (Heusel et al., 2017, eq. 6; :mod:`mgen.eval.fid`) between the
  classifier's penultimate (128-d) features of the samples and of the held-out split.

The split is fixed and version-independent (no RNG): within each class, the images are taken in
``load_digits`` order and every fifth one (positions 4, 9, 14, … of that class) is held out. That gives
1,442 training and 355 held-out images. The classifier (:class:`DigitsClassifier`) is trained by
``recipes/digits_classifier.py`` on the training split only and shipped as
``mgen/weights/digits-classifier.safetensors`` (≈0.6 MB).

Input convention: images in [-1, 1], ``B×C×H×W`` with ``C`` 1 or 3 (RGB is averaged to grey) and any
``H, W ≥ 8``; they are area-averaged down to the digits' native 8×8 grid (``load_digits`` pixel values
0…16 map to [0, 1], i.e. -1 is the background).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mgen.errors import UserError, WeightsError

WEIGHTS_FILENAME = "digits-classifier.safetensors"
NUM_CLASSES = 10
FEATURE_DIM = 128
HOLDOUT_EVERY = 5  # every 5th image of each class is held out (position % 5 == 4)


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed train / held-out split of ``load_digits``: ``(x_train, y_train, x_test, y_test)``.

    ``x`` is float32 ``N×1×8×8`` in [-1, 1] (pixel value ``v`` in 0…16 → ``v / 8 - 1``), ``y`` int64.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(NUM_CLASSES):
        idx = torch.nonzero(y == c).flatten()
        test[idx[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]] = True
    return x[~test], y[~test], x[test], y[test]


def to_digits_grid(images: torch.Tensor) -> torch.Tensor:
    """``B×C×H×W`` images in [-1, 1] (C = 1 or 3, H, W ≥ 8) → ``B×1×8×8`` grey, by channel mean and area pooling."""
    if not torch.is_tensor(images) or images.dim() != 4:
        raise UserError(f"digits metrics expect a B×C×H×W image tensor, got {getattr(images, 'shape', type(images))}")
    if images.shape[1] not in (1, 3):
        raise UserError(f"digits metrics expect 1 (grey) or 3 (RGB) channels, got {images.shape[1]}")
    if images.shape[-1] < 8 or images.shape[-2] < 8:
        raise UserError(f"digits metrics expect images of at least 8×8 pixels, got {tuple(images.shape[-2:])}")
    x = images.float()
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (8, 8):
        x = F.adaptive_avg_pool2d(x, (8, 8))
    return x


class DigitsClassifier(nn.Module):
    """A small CNN on 8×8 grey digits: conv32-conv64-pool-conv128-pool-fc128-fc10 (≈160k parameters).

    ``features(x)`` returns the penultimate 128-d (post-ReLU) activations that digits-FID uses;
    ``forward(x)`` returns the 10 class logits. Inputs go through :func:`to_digits_grid` first.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc1 = nn.Linear(128 * 2 * 2, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.dropout = nn.Dropout(0.3)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = to_digits_grid(images).to(self.conv1.weight.device)
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 4×4
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # 2×2
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.features(images)))


def default_weights_path() -> Path:
    from mgen.hub import package_weights_dir

    return package_weights_dir() / WEIGHTS_FILENAME


def load_classifier(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> DigitsClassifier:
    """The shipped classifier (or the one at ``path``), in eval mode."""
    from mgen.hub import load_checkpoint

    p = Path(path) if path is not None else default_weights_path()
    if not p.is_file():
        raise WeightsError(f"digits classifier weights not found: {p} (train them with recipes/digits_classifier.py)")
    state = load_checkpoint(p)
    model = DigitsClassifier()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{p} is not a digits-classifier checkpoint: {str(e).splitlines()[0]}") from None
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def classifier_outputs(model: DigitsClassifier, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features N×128 float64, logits N×10)`` of images in [-1, 1], on CPU."""
    feats, logits = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk)
        feats.append(f.double().cpu())
        logits.append(model.fc2(f).cpu())
    return torch.cat(feats), torch.cat(logits)


@dataclass
class DigitsReference:
    mu: np.ndarray
    sigma: np.ndarray
    num_images: int


def heldout_images(size: tuple[int, int] = (8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out split rendered at ``size`` as the shipped digits models see their data
    (bilinear up-sampling, ``align_corners=False``, as in ``mgen.tokenizers.digits``): ``(N×1×H×W, labels)``."""
    _, _, x_test, y_test = digits_split()
    if tuple(size) != (8, 8):
        x_test = F.interpolate(x_test, size=tuple(size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x_test, y_test


def reference_statistics(model: DigitsClassifier | None = None, size: tuple[int, int] = (8, 8)) -> DigitsReference:
    """Mean and covariance of the classifier's features on the held-out split (the digits-FID reference),
    rendered at the samples' ``size`` so that both sides go through the same up/down-sampling."""
    from mgen.eval.fid import statistics

    model = model or load_classifier()
    x_test, _ = heldout_images(size)
    feats, _ = classifier_outputs(model, x_test)
    mu, sigma = statistics(feats)
    return DigitsReference(mu, sigma, len(x_test))


def digits_metrics_from_outputs(features: torch.Tensor, logits: torch.Tensor | None, labels: torch.Tensor | None,
                                size: tuple[int, int], model: DigitsClassifier | None = None) -> dict[str, float]:
    """Digits-FID (and accuracy when ``logits`` and the requested ``labels`` are given) from classifier outputs
    of samples of ``size`` (H, W)."""
    from mgen.eval.fid import frechet_distance, statistics

    if features.shape[0] < 2:
        raise UserError("digits-FID needs at least 2 samples")
    ref = reference_statistics(model, size=tuple(size))
    mu, sigma = statistics(features)
    out = {"digits_fid": frechet_distance(mu, sigma, ref.mu, ref.sigma)}
    if labels is not None and logits is not None:
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != (features.shape[0],):
            raise UserError(f"{labels.numel()} labels for {features.shape[0]} samples")
        out["digits_accuracy"] = float((logits.argmax(1).cpu() == labels).double().mean())
    return out


def digits_metrics(images: torch.Tensor, labels: torch.Tensor | None = None,
                   model: DigitsClassifier | None = None) -> dict[str, float]:
    """``{"digits_fid", "digits_accuracy"}`` of samples (accuracy only when the requested ``labels`` are given).

    ``images``: ``N×C×H×W`` in [-1, 1]; ``labels``: the classes the samples were drawn for.
    """
    if not torch.is_tensor(images) or images.dim() != 4:
        raise UserError(f"digits metrics expect N×C×H×W images, got {getattr(images, 'shape', type(images))}")
    model = model or load_classifier()
    feats, logits = classifier_outputs(model, images)
    return digits_metrics_from_outputs(feats, logits, labels, tuple(images.shape[-2:]), model)
