"""Named models: ``configs/*.yaml`` read into typed dataclasses.

Each YAML file describes one named model (a generator or a tokenizer): its family, the architecture
numbers (``arch``, kept as a plain mapping that the family's config dataclass validates), the tokenizer
it works on, where its weights are looked for, and the paper it comes from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mgen.errors import UserError
from mgen.families import FAMILIES


@dataclass(frozen=True)
class WeightsSpec:
    """Where a named model's weights are looked for, in resolution order (see :mod:`mgen.hub`).

    ``package``: a file shipped in ``mgen/weights`` (the offline digits models).
    ``filename``: the official file name, looked for in ``$MGEN_HOME/<name>/`` (default ``~/.cache/mgen``).
    ``hf_repo`` / ``hf_filename``: a Hugging Face repo, read from the local HF cache.
    ``url``: the official download address, printed for the user when nothing is found.
    """

    package: str | None = None
    filename: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    description: str = ""
    arch: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    num_params: str | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    weights: WeightsSpec = field(default_factory=WeightsSpec)
    source: str = ""
    path: str = ""

    @property
    def is_tokenizer(self) -> bool:
        return FAMILIES[self.family].is_tokenizer


_KNOWN = {f.name for f in dataclasses.fields(ModelEntry)}


def configs_dir() -> Path:
    """The folder holding the shipped YAML files (``configs/``, installed as ``mgen.configs``)."""
    return Path(str(resources.files("mgen.configs")))


def parse_entry(data: dict[str, Any], path: str | Path = "<dict>") -> ModelEntry:
    """Validate one YAML mapping into a :class:`ModelEntry`; unknown keys are an error."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: a model config must be a YAML mapping")
    unknown = set(data) - _KNOWN
    if unknown:
        raise UserError(f"{path}: unknown config keys {sorted(unknown)}; allowed: {sorted(_KNOWN - {'path'})}")
    for key in ("name", "family"):
        if key not in data:
            raise UserError(f"{path}: missing required key {key!r}")
    if data["family"] not in FAMILIES:
        raise UserError(f"{path}: unknown family {data['family']!r}; known: {', '.join(FAMILIES)}")
    weights = data.get("weights") or {}
    wfields = {f.name for f in dataclasses.fields(WeightsSpec)}
    if not isinstance(weights, dict) or set(weights) - wfields:
        raise UserError(f"{path}: 'weights' must be a mapping with keys among {sorted(wfields)}")
    for key in ("arch", "sampler", "train"):
        if not isinstance(data.get(key, {}) or {}, dict):
            raise UserError(f"{path}: {key!r} must be a mapping")
    kwargs = {k: v for k, v in data.items() if k != "weights"}
    for key in ("arch", "sampler", "train"):
        kwargs[key] = dict(kwargs.get(key) or {})
    if kwargs.get("num_params") is not None:
        kwargs["num_params"] = str(kwargs["num_params"])
    return ModelEntry(weights=WeightsSpec(**weights), path=str(path), **kwargs)


def load_config_file(path: str | Path) -> ModelEntry:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_entry(data, path)


@lru_cache(maxsize=1)
def _all() -> dict[str, ModelEntry]:
    entries: dict[str, ModelEntry] = {}
    for p in sorted(configs_dir().glob("*.yaml")):
        entry = load_config_file(p)
        if entry.name != p.stem:
            raise UserError(f"{p}: name {entry.name!r} does not match the file name")
        entries[entry.name] = entry
    return entries


def list_models() -> list[ModelEntry]:
    """Every named model, sorted by name."""
    return list(_all().values())


def get(name: str) -> ModelEntry:
    """The entry for ``name``; unknown names raise a :class:`UserError` listing the known ones."""
    entries = _all()
    if name not in entries:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(entries)} (or pass a local path)")
    return entries[name]
