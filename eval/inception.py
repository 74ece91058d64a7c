"""The Inception-v3 feature extractor behind published FIDs, as torch-fidelity ships it.

mgen uses torch-fidelity's own ``FeatureExtractorInceptionV3`` (the port of the 2015-12-05 TensorFlow
graph used by TTUR / ADM / MAR; Szegedy et al., 2016) so that features are those of
``torch_fidelity.calculate_metrics``: uint8 ``B×3×H×W`` in, TF1-style bilinear resize to 299×299 inside
the model, ``(x − 128) / 128``, and the ``"2048"`` pool features (FID, KID, precision/recall) plus the
``"logits_unbiased"`` (IS) from one forward pass.

Weights are never downloaded by mgen. They are read from ``--inception-weights PATH`` (the
``weights-inception-2015-12-05-6726825d.pth`` file torch-fidelity downloads, or a safetensors copy), or
else from the places torch-fidelity / mgen would have put them (``$TORCH_HOME/hub/checkpoints/``,
``$MGEN_HOME/inception/``). The file is read with mgen's safe loader (``weights_only=True``) instead of
torch-fidelity's unrestricted ``torch.load``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from mgen.errors import UserError, WeightsError
from mgen.eval.outputs import write_bytes

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILENAME
FEATURES = ("2048", "logits_unbiased")  # FID/KID/PR layer, IS layer (torch-fidelity defaults)


def default_inception_paths() -> list[Path]:
    """Where an already-downloaded Inception file is looked for when no path is given."""
    from mgen.hub import mgen_home

    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return [torch_home / "hub" / "checkpoints" / INCEPTION_FILENAME, mgen_home() / "inception" / INCEPTION_FILENAME]


def resolve_inception_weights(path: str | os.PathLike | None) -> Path:
    """The Inception weights file to use, or one :class:`WeightsError` line saying how to provide it."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise WeightsError(f"Inception weights not found: {p}")
        return p
    for p in default_inception_paths():
        if p.is_file():
            return p
    raise WeightsError(
        f"Inception weights are needed and mgen does not download them: pass --inception-weights PATH "
        f"(torch-fidelity's {INCEPTION_FILENAME}, from {INCEPTION_URL}) or put the file in "
        f"{default_inception_paths()[0].parent}/")


def load_inception(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   features: tuple[str, ...] = FEATURES) -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with the given weights, in eval mode on ``device``.

    ``model(uint8 B×3×H×W)`` returns a tuple of float32 features in the order of ``features``.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from mgen.hub import load_checkpoint

    path = resolve_inception_weights(weights)
    state = load_checkpoint(path)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    # Hand torch-fidelity a re-serialised copy of the safely loaded tensors (it calls torch.load itself).
    buf = io.BytesIO()
    torch.save({k: v for k, v in state.items() if torch.is_tensor(v)}, buf)
    buf.seek(0)
    try:
        model = FeatureExtractorInceptionV3("inception-v3-compat", list(features), feature_extractor_weights_path=buf)
    except RuntimeError as e:
        raise WeightsError(f"{path} is not a torch-fidelity Inception-v3 state dict: {str(e).splitlines()[0]}") from None
    return model.to(device).eval().requires_grad_(False)


def random_inception_weights(path: str | os.PathLike, seed: int = 0, calibration_size: int = 75) -> Path:
    """Write a randomly initialised Inception state dict in torch-fidelity's on-disk format (for tests).

    Conv and linear weights are He-normal from a seeded generator. The batch-norm statistics are then
    calibrated on a seeded batch of random images (each BN layer's running mean/variance set to that
    batch's statistics, as one training-mode pass with cumulative averaging does), so that the 2048-d
    features vary from image to image instead of collapsing onto one point.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for k, v in _skeleton_state().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.zeros((), dtype=torch.long)
        elif k.endswith("running_mean") or k.endswith("bn.bias"):
            state[k] = torch.zeros(v.shape)
        elif k.endswith("running_var") or k.endswith("bn.weight"):
            state[k] = torch.ones(v.shape)
        elif k == "fc.bias":
            state[k] = 0.01 * torch.randn(v.shape, generator=g)
        else:  # conv / fc weights
            state[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=buf)
    old_size = FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one pass sets the running stats to the batch stats
            m.reset_running_stats()
    images = torch.randint(0, 256, (8, 3, 16, 16), generator=g, dtype=torch.uint8)
    try:
        FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE = calibration_size
        model.train()
        with torch.no_grad():
            model(images)
    finally:
        FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE = old_size
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k in out:
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros((), dtype=torch.long)
    buf = io.BytesIO()
    torch.save(out, buf)
    return write_bytes(path, buf.getvalue())  # atomic: a kill never leaves a truncated weights file


def _skeleton_state() -> dict[str, torch.Tensor]:
    """Key names and shapes of torch-fidelity's Inception state dict, from the module definition."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _NoLoad(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # type: ignore[override]
            return None

    with torch.device("meta"):
        m = _NoLoad("inception-v3-compat", ["2048"], feature_extractor_weights_path=_EmptyState())
    return {k: torch.empty(v.shape) for k, v in m.state_dict().items()}


class _EmptyState(io.BytesIO):
    """A file-like object holding an empty torch-saved dict (what the skeleton's constructor loads)."""

    def __init__(self) -> None:
        super().__init__()
        torch.save({}, self)
        self.seek(0)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class InceptionFeatures:
    """Batched feature extraction: uint8 ``B×3×H×W`` batches → ``{"2048": N×2048, "logits_unbiased": N×1008}``.

    The network runs in ``channels_last`` memory format under ``torch.inference_mode`` (faster on CPU
    and GPU; the arithmetic is the same up to float32 rounding). Features are returned on the CPU.
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 features: tuple[str, ...] = FEATURES, model: torch.nn.Module | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.features = tuple(features)
        self.model = model if model is not None else load_inception(weights, self.device, self.features)
        self.model = self.model.to(self.device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        out = self.model(x)
        return {k: v.float().cpu() for k, v in zip(self.features, out)}

    def extract(self, batches, total: int | None = None, progress: bool = False, desc: str = "features") -> dict[str, torch.Tensor]:
        """Run every batch of an iterator through the network and concatenate the features."""
        from tqdm import tqdm

        parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.features}
        with tqdm(total=total, unit="img", desc=desc, disable=not progress, leave=False) as bar:
            for b in batches:
                for k, v in self(b).items():
                    parts[k].append(v)
                bar.update(b.shape[0])
        if not parts[self.features[0]]:
            raise UserError("no images to extract features from")
        return {k: torch.cat(v) for k, v in parts.items()}
