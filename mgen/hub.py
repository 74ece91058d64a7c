"""Name → weights: resolution of ``--model NAME|PATH`` / ``--weights PATH`` and safe loading.

Resolution order (docs/ARCHITECTURE.md, "Resolver"):

1. ``--weights PATH`` or a ``--model`` that is an existing local file or folder;
2. ``configs/NAME.yaml``: a file shipped in the package (``weights.package``), the official file in
   ``$MGEN_HOME/NAME/`` (default ``~/.cache/mgen``), the local Hugging Face cache
   (``weights.hf_repo`` / ``hf_filename``; mgen never downloads at run time);
3. otherwise one :class:`~mgen.errors.WeightsError` line naming the file expected and how to get it.

Loading: safetensors first; ``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin`` through
``torch.load(weights_only=True)`` with an explicit allow-list of the few harmless globals official
checkpoints contain (``argparse.Namespace``, numpy scalars). Anything else is refused, naming the
offending globals; truncated or corrupt files raise an error naming the file.
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from mgen import registry
from mgen.errors import WeightsError

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl")


def _numpy_globals() -> list[Any]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    out: list[Any] = [np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["scalar"])
            out.append(m.scalar)
            break
        except (ImportError, AttributeError):
            continue
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


def safe_globals() -> list[Any]:
    """The globals mgen lets ``torch.load(weights_only=True)`` rebuild: plain data, no code."""
    return [argparse.Namespace, *_numpy_globals()]


#: called with (path, loaded mapping) after every successful :func:`load_checkpoint` (see :func:`observe_loads`)
LoadObserver = Callable[[Path, dict[str, Any]], None]
_LOAD_OBSERVERS: ContextVar[tuple[LoadObserver, ...]] = ContextVar("mgen_load_observers", default=())


@contextmanager
def observe_loads(fn: LoadObserver) -> Iterator[None]:
    """Within the block, ``fn(path, mapping)`` runs after each :func:`load_checkpoint` (``mgen convert``'s
    progress bar counts the tensors read this way, without the converters knowing)."""
    token = _LOAD_OBSERVERS.set(_LOAD_OBSERVERS.get() + (fn,))
    try:
        yield
    finally:
        _LOAD_OBSERVERS.reset(token)


def count_tensors(obj: Any) -> tuple[int, int]:
    """(number of tensors, bytes) in a loaded checkpoint, nested dicts / lists included."""
    if isinstance(obj, torch.Tensor):
        return 1, obj.numel() * obj.element_size()
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    n = size = 0
    for v in items:
        a, b = count_tensors(v)
        n, size = n + a, size + b
    return n, size


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a weights file safely and return its top-level mapping.

    safetensors files give their tensors; pickled PyTorch files give whatever dict they hold (e.g.
    ``{"model": ..., "model_ema": ..., "args": Namespace(...)}``). Observers of :func:`observe_loads` see it.
    """
    obj = _load_checkpoint(path)
    for fn in _LOAD_OBSERVERS.get():
        fn(Path(path), obj)
    return obj


def _load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise WeightsError(f"{path}: unsupported weights format {path.suffix!r}; use .safetensors or a PyTorch .pth/.pt/.ckpt/.bin")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "not an allowed global" in msg or "weights_only" in msg.lower():
            raise WeightsError(f"{path}: refused to load: {_unsafe_globals(path) or 'it pickles objects'} "
                               "outside mgen's allow-list (plain tensors, argparse.Namespace, numpy scalars); "
                               "re-save it as safetensors from a trusted environment") from None
        raise WeightsError(f"{path}: corrupt or truncated checkpoint ({msg.splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise WeightsError(f"{path}: corrupt or truncated checkpoint ({first})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of tensors or a checkpoint dict, found {type(obj).__name__}")
    return obj


def _unsafe_globals(path: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return ""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_globals()}
    names = [n for n in names if n not in allowed]
    return "globals " + ", ".join(names) if names else ""


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors atomically (temp file + rename): a failure never leaves a half-written file."""
    from safetensors.torch import save_file

    from mgen.fileio import atomic_write

    path = Path(path)
    with atomic_write(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    return path


def mgen_home() -> Path:
    """Where official weight files are looked for: ``$MGEN_HOME`` or ``~/.cache/mgen``."""
    return Path(os.environ.get("MGEN_HOME") or Path.home() / ".cache" / "mgen")


def package_weights_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("mgen.weights")))


@dataclass(frozen=True)
class Candidate:
    where: str  # "package", "home", "hf-cache"
    path: Path | None  # None when the place could not name a concrete file (HF cache miss)
    label: str  # human-readable place, for `mgen info` and error messages


def candidates(entry: registry.ModelEntry) -> list[Candidate]:
    """The places a named model's weights are looked for, in order."""
    w = entry.weights
    out: list[Candidate] = []
    if w.package:
        p = package_weights_dir() / w.package
        out.append(Candidate("package", p, f"mgen/weights/{w.package}"))
    if w.filename:
        p = mgen_home() / entry.name / w.filename
        out.append(Candidate("home", p, str(p)))
    if w.hf_repo:
        fname = w.hf_filename or w.filename or "model.safetensors"
        out.append(Candidate("hf-cache", _hf_cached(w.hf_repo, fname), f"HF cache {w.hf_repo}/{fname}"))
    return out


def _hf_cached(repo: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        # HF_HUB_CACHE is read at call time (huggingface_hub reads it once, at import).
        hit = try_to_load_from_cache(repo_id=repo, filename=filename, cache_dir=os.environ.get("HF_HUB_CACHE"))
    except Exception:
        return None
    return Path(hit) if isinstance(hit, str) else None


def find_weights(entry: registry.ModelEntry) -> Path | None:
    """The first existing weights path for ``entry``, or None."""
    for c in candidates(entry):
        if c.path is not None and c.path.exists():
            return c.path
    return None


def how_to_get(entry: registry.ModelEntry) -> str:
    """One sentence telling the user where to put the weights or how to download them."""
    w = entry.weights
    expected = w.filename or w.hf_filename or w.package or "a weights file"
    parts = [f"put {expected} in {mgen_home() / entry.name}/"]
    if w.hf_repo:
        # huggingface_hub >= 1.0 installs the `hf` command (the older `huggingface-cli` is gone)
        parts.append(f"run `hf download {w.hf_repo} {w.hf_filename or w.filename or 'model.safetensors'}`")
    if w.url:
        parts.append(f"download {w.url}")
    parts.append("or pass --weights PATH")
    return ", ".join(parts[:-1]) + (", " if len(parts) > 1 else "") + parts[-1]


@dataclass(frozen=True)
class Resolved:
    """A resolved model: its registry entry (None for a bare local path) and its weights path."""

    entry: registry.ModelEntry | None
    path: Path


def resolve(model: str | os.PathLike, weights: str | os.PathLike | None = None, what: str = "weights") -> Resolved:
    """Resolve ``--model`` and ``--weights`` to a registry entry and an existing weights path."""
    if weights is not None:
        wp = Path(weights).expanduser()
        if not wp.exists():
            raise WeightsError(f"--{'weights' if what == 'weights' else what} {wp}: no such file or folder")
        entry = None if _looks_like_path(model) else registry.get(str(model))
        return Resolved(entry, wp)
    if _looks_like_path(model):
        p = Path(model).expanduser()
        if not p.exists():
            raise WeightsError(f"{p}: no such file or folder (and not a model name)")
        return Resolved(None, p)
    entry = registry.get(str(model))
    found = find_weights(entry)
    if found is None:
        looked = "; ".join(c.label for c in candidates(entry)) or "nowhere (the config names no weights)"
        raise WeightsError(f"{entry.name}: {what} not found (looked in: {looked}); to provide them, {how_to_get(entry)}")
    return Resolved(entry, found)


def _looks_like_path(model: str | os.PathLike) -> bool:
    s = str(model)
    return isinstance(model, os.PathLike) or os.sep in s or s.endswith(PICKLE_SUFFIXES + (".safetensors",)) or (
        Path(s).exists() and not _is_registered(s)
    )


def _is_registered(name: str) -> bool:
    return any(e.name == name for e in registry.list_models())


def iter_state_dicts(ckpt: dict[str, Any], keys: Iterable[str]) -> dict[str, torch.Tensor] | None:
    """The first of ``keys`` present in a checkpoint dict whose value is a state dict."""
    for k in keys:
        v = ckpt.get(k)
        if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()):
            return v
    return None
