"""diffusers-style pipelines: a tokenizer, a generator and a sampler behind one ``__call__``.

:func:`load_pipeline` turns ``--model NAME|PATH`` (+ ``--weights``, ``--tokenizer-weights``) into a ready
pipeline by dispatching on the model family. Each family adds ONE entry to :data:`PIPELINES`:
``family -> "module:attribute"`` (imported lazily), where the attribute is either a loader function
``loader(model, weights=None, tokenizer_weights=None, device=None, **overrides) -> pipeline`` or a
pipeline class whose ``from_pretrained(model, weights=..., tokenizer=..., device=..., **overrides)``
has that meaning.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable

from mgen.errors import UserError

#: family -> "module:attribute" (a loader function or a pipeline class with ``from_pretrained``).
PIPELINES: dict[str, str] = {
    "mar": "mgen.pipelines.mar:load_mar_pipeline",
    "maskgit": "mgen.pipelines.maskgit:MaskGITPipeline",
    "enat": "mgen.pipelines.enat:ENATPipeline",
    "dit": "mgen.pipelines.dit:DiTPipeline",
    "rae-dit": "mgen.pipelines.rae_dit:RAEDiTPipeline",
}

#: pipeline class name (``model_index.json``'s ``_class_name``) -> family, for saved pipeline folders.
CLASS_FAMILIES: dict[str, str] = {"MARPipeline": "mar", "MaskGITPipeline": "maskgit", "ENATPipeline": "enat",
                                  "DiTPipeline": "dit", "RAEDiTPipeline": "rae-dit"}


def register_pipeline(family: str, target: str | Callable[..., Any]) -> None:
    """Add (or replace) the loader of ``family``: a ``"module:attribute"`` string or a callable."""
    PIPELINES[family] = target  # type: ignore[assignment]


def _resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(target):
        return target
    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


def family_of(model: str | os.PathLike) -> tuple[str, Any]:
    """(family, registry entry or None) of a model name or a saved pipeline folder."""
    from mgen import registry

    p = Path(os.fspath(model)).expanduser()
    if p.is_dir() and (p / "model_index.json").exists():
        cls = json.loads((p / "model_index.json").read_text()).get("_class_name")
        if cls in CLASS_FAMILIES:
            return CLASS_FAMILIES[cls], None
        raise UserError(f"{p}: unknown pipeline class {cls!r} in model_index.json")
    if p.exists():
        from mgen.pipelines.dlm import is_text_model_path  # a transformers folder or our dlm file

        if is_text_model_path(p):
            return "dlm", None
        raise UserError(f"{p}: cannot tell which model family this file is for; pass a model name with "
                        f"--model NAME --weights {p}")
    entry = registry.get(str(model))
    return entry.family, entry


def load_pipeline(model: str | os.PathLike, weights: str | os.PathLike | None = None,
                  tokenizer_weights: str | os.PathLike | None = None, device: Any = None, **overrides: Any) -> Any:
    """The pipeline for ``model`` (a registry name or a saved pipeline folder), on ``device``.

    ``weights`` / ``tokenizer_weights`` replace the generator's / tokenizer's files found by name;
    ``overrides`` are sampler settings passed to the family's loader.
    """
    family, entry = family_of(model)
    if entry is not None and entry.is_tokenizer:
        raise UserError(f"{entry.name} is a tokenizer, not a generator; pick a generator model")
    if family not in PIPELINES:
        raise UserError(f"sampling from {family!r} models ({model}) is not available in this version of mgen")
    target = _resolve(PIPELINES[family])
    if inspect.isclass(target):
        kwargs: dict[str, Any] = {"weights": weights, **overrides}
        if tokenizer_weights is not None:
            kwargs["tokenizer"] = tokenizer_weights
        if device is not None:
            kwargs["device"] = device
        return target.from_pretrained(os.fspath(model), **kwargs)
    return target(os.fspath(model), weights=weights, tokenizer_weights=tokenizer_weights, device=device, **overrides)
