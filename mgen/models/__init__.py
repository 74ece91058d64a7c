"""Generators: MaskGIT, MAR + diffusion-loss head, ENAT, DiT + DDT head, diffusion LMs (docs/ARCHITECTURE.md).

:func:`load_model` is the model-level entry of the one resolver (:mod:`mgen.resolver`): a registry name, a YAML
config, a saved model or pipeline folder, or an official checkpoint → the family's generator class.
"""

from __future__ import annotations

import os
from typing import Any

from mgen.errors import UserError
from mgen.resolver import build_component, resolve


def load_model(name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None, config: Any = None,
               **kwargs: Any) -> Any:
    """The generator of ``name_or_path`` (``weights`` replaces the file a name would find; ``config`` names the
    architecture of a bare official file: a registry name or a YAML path). ``torch_dtype`` is honoured."""
    spec = resolve(name_or_path, weights, config=config, want="generator")
    if not spec.family.is_generator:
        raise UserError(f"{os.fspath(name_or_path)} is a {spec.family.name!r} model, not a generator")
    return build_component(spec, **kwargs).eval()


__all__ = ["load_model"]
