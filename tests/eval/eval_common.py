"""Shared helpers of the eval tests: a seeded random Inception file in torch-fidelity's format, small
digits image folders, and a smaller Inception input size so that CPU tests stay fast.

``FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE`` is a class attribute used by both torch-fidelity and
mgen (they run the very same class), so lowering it to 75 px keeps the comparison like-for-like while
cutting the cost of each image ~16×; one test runs the real 299 px path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SMALL_SIZE = 75


def inception_file(base: Path, seed: int = 0) -> Path:
    """A cached random-init Inception weights file (written once per test session)."""
    from mgen.eval.inception import random_inception_weights

    p = base / f"eval-inception-seed{seed}.pth"
    if not p.is_file():
        torch.set_num_threads(min(2, torch.get_num_threads()))
        random_inception_weights(p, seed=seed)
    return p


def write_digits_folder(folder: Path, split: str, n: int, size: int = 16, channels: int = 3, offset: int = 0) -> Path:
    from mgen.eval.digits import heldout_images, digits_split
    from mgen.images import save_png, to_pil

    import torch.nn.functional as F

    x_tr, _, x_te, _ = digits_split()
    x = (x_tr if split == "train" else x_te)[offset:offset + n]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(to_pil(x)):
        save_png(im, folder / f"{i:05d}.png")
    return folder


@pytest.fixture
def small_inception(monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", SMALL_SIZE)
    return SMALL_SIZE


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    return inception_file(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def digits_folders(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.getbasetemp() / "eval-digits"
    fake = base / "fake"
    real = base / "real"
    if not fake.is_dir():
        write_digits_folder(fake, "train", 30)
        write_digits_folder(real, "test", 30)
    return fake, real
