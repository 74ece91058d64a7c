"""Reading PyTorch-Lightning ``.ckpt`` files (taming's VQGAN ``last.ckpt``, LDM's autoencoders) with mgen's safe
loader: Lightning objects pickled next to the weights are read as inert placeholders, nothing else is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mgen.errors import WeightsError
from mgen.hub import load_checkpoint, safe_globals


class _Placeholder:
    """Stands in for pytorch-lightning objects (callbacks, enums) pickled next to a checkpoint's tensors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def load_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`mgen.hub.load_checkpoint`, also for PyTorch-Lightning ``.ckpt`` files such as taming's VQGAN
    ``last.ckpt``: globals under ``pytorch_lightning.`` / ``lightning.`` (callback state next to the weights)
    are read as inert placeholders; any other non-allow-listed global is still refused."""
    try:
        return load_checkpoint(path)
    except WeightsError as first:
        if "refused" not in str(first):
            raise
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            raise first from None
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_globals()}
        extra = [n for n in names if n not in allowed]
        if not extra or not all(n.startswith(("pytorch_lightning.", "lightning.", "lightning_fabric.")) for n in extra):
            raise first from None
        try:
            with torch.serialization.safe_globals([*safe_globals(), *[(_Placeholder, n) for n in extra]]):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here means the file is not usable
            raise WeightsError(f"{path}: could not read the Lightning checkpoint ({str(e).splitlines()[0]})") from None
        if not isinstance(obj, dict):
            raise WeightsError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
        return obj
