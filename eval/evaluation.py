"""``evaluate(fake, real, ...)``: FID / IS / KID / precision-recall on torch-fidelity's Inception features.

One pass of the network per image set gives both the 2048-d pool features (FID, Heusel et al. 2017;
KID, Bińkowski et al. 2018; precision/recall, Kynkäänniemi et al. 2019) and the ``logits_unbiased``
(IS, Salimans et al. 2016). With the same inputs and weights, the numbers equal
``torch_fidelity.calculate_metrics(input1=fake, input2=real, isc=…, fid=…, kid=…)`` (precision/recall:
with ``feature_extractor="inception-v3-compat"``, since torch-fidelity's own default for them is VGG-16).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import torch

from mgen.errors import UserError
from mgen.eval import fid as _fid
from mgen.eval import isc as _isc
from mgen.eval import kid as _kid
from mgen.eval import prdc as _prdc
from mgen.eval.inception import InceptionFeatures
from mgen.eval.inputs import ImageSource, as_source

METRIC_ALIASES = {"fid": "fid", "is": "is", "isc": "is", "kid": "kid", "pr": "pr", "prc": "pr",
                  "precision": "pr", "recall": "pr", "precision_recall": "pr"}


def normalize_metrics(metrics: Iterable[str] | str) -> list[str]:
    """Metric names → canonical ``fid``/``is``/``kid``/``pr`` (order kept, duplicates dropped)."""
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(",", " ").split() if m]
    out: list[str] = []
    for m in metrics:
        key = METRIC_ALIASES.get(str(m).lower())
        if key is None:
            raise UserError(f"unknown metric {m!r}: choose from fid, is, kid, pr (precision/recall)")
        if key not in out:
            out.append(key)
    if not out:
        raise UserError("no metric requested")
    return out


def is_stats_file(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike)) and str(x).lower().endswith(".npz")


def metrics_from_features(fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor] | tuple | None,
                          metrics: Iterable[str], kid_subset_size: int = _kid.DEFAULT_SUBSET_SIZE,
                          kid_subsets: int = _kid.DEFAULT_SUBSETS, isc_splits: int = _isc.DEFAULT_SPLITS,
                          pr_k: int = _prdc.DEFAULT_K, seed: int = 2020) -> dict[str, float]:
    """The metrics from extracted features. ``real``: a feature dict, ``(mu, sigma)`` statistics, or None."""
    ms = normalize_metrics(metrics)
    out: dict[str, float] = {}
    if "fid" in ms:
        if real is None:
            raise UserError("FID needs real images or reference statistics")
        ref = real if isinstance(real, tuple) else real["2048"]
        if isinstance(real, tuple) and real[0].shape[0] != fake["2048"].shape[1]:
            raise UserError(f"reference statistics are {real[0].shape[0]}-d but the features are "
                            f"{fake['2048'].shape[1]}-d")
        out["fid"] = _fid.fid(fake["2048"], ref)
    if "is" in ms:
        out["is"], out["is_std"] = _isc.inception_score(fake["logits_unbiased"], isc_splits, seed=seed)
    for m in ("kid", "pr"):
        if m in ms and (real is None or isinstance(real, tuple)):
            what = "KID" if m == "kid" else "precision/recall"
            raise UserError(f"{what} needs real images (a folder or tensor), not only reference statistics")
    if "kid" in ms:
        out["kid"], out["kid_std"] = _kid.kernel_inception_distance(fake["2048"], real["2048"], kid_subsets,
                                                                    kid_subset_size, seed)
    if "pr" in ms:
        out["precision"], out["recall"] = _prdc.precision_recall(fake["2048"], real["2048"], pr_k)
    return out


def check_same_kind(fake_src: ImageSource, real_src: ImageSource | None) -> None:
    """Refuse grey images against colour ones (a preprocessing mismatch, not a model property)."""
    if real_src is None or fake_src.grey is None or real_src.grey is None or fake_src.grey == real_src.grey:
        return
    kinds = ("colour", "grey")
    raise UserError(f"fake images are {kinds[fake_src.grey]} but real images are {kinds[real_src.grey]}: "
                    "compare images of the same kind")


def _check_counts(ms: list[str], n_fake: int | None, n_real: int | None, kid_subset_size: int, isc_splits: int,
                  pr_k: int) -> None:
    """Fail before the (slow) feature extraction when the image counts cannot give the metrics asked."""
    known = [n for n in (n_fake, n_real) if n is not None]
    if "kid" in ms and known and min(known) < kid_subset_size:
        raise UserError(f"KID subset size {kid_subset_size} is larger than the number of images ({min(known)}); "
                        "lower it with kid_subset_size / --kid-subset-size")
    if "is" in ms and n_fake is not None and n_fake < isc_splits:
        raise UserError(f"Inception Score with {isc_splits} splits needs at least {isc_splits} images, got {n_fake}")
    if "pr" in ms and known and min(known) <= pr_k:
        raise UserError(f"precision/recall with k={pr_k} need more than {pr_k} images on each side, got {min(known)}")
    if "fid" in ms and n_fake is not None and n_fake < 2:
        raise UserError(f"FID needs at least 2 images, got {n_fake}")


def extract_source(src: ImageSource, extractor: InceptionFeatures, batch_size: int, progress: bool) -> dict[str, torch.Tensor]:
    return extractor.extract(src.batches(batch_size), total=src.num_images, progress=progress, desc=src.name)


def evaluate(fake: Any, real: Any = None, inception_weights: str | os.PathLike | None = None,
             metrics: Iterable[str] | str = ("fid", "is", "kid"), kid_subset_size: int = _kid.DEFAULT_SUBSET_SIZE,
             kid_subsets: int = _kid.DEFAULT_SUBSETS, isc_splits: int = _isc.DEFAULT_SPLITS,
             pr_k: int = _prdc.DEFAULT_K, batch_size: int = 64, device: str | torch.device | None = None,
             seed: int = 2020, progress: bool = False, extractor: InceptionFeatures | None = None,
             return_features: bool = False) -> dict[str, Any]:
    """FID / IS / KID / precision-recall of ``fake`` against ``real``.

    ``fake``, ``real``: an image folder, a tensor/array of images (uint8, or float in [-1, 1]), or an
    iterable of such batches; ``real`` may also be a reference ``.npz`` with ``mu`` and ``sigma``
    (FID only). Returns ``{"fid", "is", "is_std", "kid", "kid_std", "precision", "recall"}`` for the
    metrics asked, plus ``num_fake`` / ``num_real``. ``seed`` is torch-fidelity's ``rng_seed`` (IS shuffle,
    KID subsets).
    """
    ms = normalize_metrics(metrics)
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    needs_real = any(m in ms for m in ("fid", "kid", "pr"))
    if needs_real and real is None:
        raise UserError(f"{', '.join(m for m in ms if m != 'is').upper()} need real images or reference statistics")
    # check every input before the (slow) network runs
    fake_src = as_source(fake, "fake")
    real_stats = real_src = None
    if needs_real:
        if is_stats_file(real):
            for m, what in (("kid", "KID"), ("pr", "precision/recall")):
                if m in ms:
                    raise UserError(f"{what} needs real images (a folder or tensor), not only reference statistics")
            real_stats = _fid.load_stats(real)
        else:
            real_src = as_source(real, "real")
            check_same_kind(fake_src, real_src)
    _check_counts(ms, fake_src.num_images, real_src.num_images if real_src is not None else None,
                  kid_subset_size, isc_splits, pr_k)
    extractor = extractor or InceptionFeatures(inception_weights, device)
    fake_feats = extract_source(fake_src, extractor, batch_size, progress)
    real_feats = extract_source(real_src, extractor, batch_size, progress) if real_src is not None else None
    out: dict[str, Any] = metrics_from_features(fake_feats, real_stats if real_stats is not None else real_feats, ms,
                                                kid_subset_size, kid_subsets, isc_splits, pr_k, seed)
    out["num_fake"] = int(fake_feats["2048"].shape[0])
    if real_feats is not None:
        out["num_real"] = int(real_feats["2048"].shape[0])
    if return_features:
        out["features"] = {"fake": fake_feats, "real": real_feats}
    return out


def save_reference_stats(images: Any, path: str | os.PathLike, inception_weights: str | os.PathLike | None = None,
                         batch_size: int = 64, device: str | torch.device | None = None, progress: bool = False,
                         extractor: InceptionFeatures | None = None) -> Path:
    """Write the ADM / MAR-style ``.npz`` (``mu``, ``sigma`` of the 2048-d features) of a set of images."""
    src = as_source(images, "images")
    extractor = extractor or InceptionFeatures(inception_weights, device)
    feats = extract_source(src, extractor, batch_size, progress)
    mu, sigma = _fid.statistics(feats["2048"])
    return _fid.save_stats(path, mu, sigma)
