"""The one path from a name to an object: what a ``name_or_path`` is, which family it belongs to, where its weights are.

:func:`resolve` classifies a registry name, a YAML config file, a saved pipeline folder (ours or a diffusers
``DiTPipeline`` folder), a component folder (``config.json`` + safetensors, ours or diffusers'/transformers'), or
a bare weights file (official ``.pth``/``.ckpt``/``.pt`` or safetensors) into a :class:`Spec`: the family (from
:mod:`mgen.families`), the registry entry when there is one, and the local path of the weights. The three public
loaders build on it and on nothing else:

* :func:`mgen.models.load_model` — a generator;
* :func:`mgen.tokenizers.load_tokenizer` — a tokenizer;
* :func:`mgen.pipelines.load_pipeline` — a whole pipeline.

Per-family code supplies only what differs: each model class's ``from_pretrained`` reads its own on-disk formats
(official key maps, config inference), and a tokenizer family's ``looks_like(state_dict)`` tells its bare official
checkpoints apart (docs/ARCHITECTURE.md, "Resolver").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mgen import hub, registry
from mgen.errors import UserError, WeightsError
from mgen.families import FAMILIES, Family, family_of_class, family_of_tag, get_family, import_target

#: layouts a :class:`Spec` can describe
NAME, YAML, PIPELINE_FOLDER, DIFFUSERS_DIT_FOLDER, COMPONENT_FOLDER, TRANSFORMERS_FOLDER, FILE = (
    "name", "yaml", "pipeline-folder", "diffusers-dit-folder", "component-folder", "transformers-folder", "file")


@dataclass(frozen=True)
class Spec:
    """What a ``name_or_path`` resolved to."""

    family: Family
    layout: str
    entry: registry.ModelEntry | None = None  # the registry / YAML entry, when there is one
    path: Path | None = None  # local weights file or folder (None: a parameter-free model built from its arch)
    #: with ``resolve(..., missing_ok=True)``: why the weights a registry name needs were not found (else None)
    missing: str | None = None

    @property
    def config_hint(self) -> Any:
        """What to pass as ``config=`` to the family's ``from_pretrained``: the registry name, or a YAML's arch."""
        if self.entry is None:
            return None
        if _registered(self.entry.name) and registry.get(self.entry.name) is self.entry:
            return self.entry.name
        return dict(self.entry.arch)


def read_json(path: str | os.PathLike, what: str, error: type[UserError] = UserError) -> dict[str, Any]:
    """A JSON object from ``path``, or a one-line ``error`` (a :class:`UserError`; the tokenizers raise
    :class:`WeightsError` for their config files) naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not a text JSON file ({what})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON ({what}): {e.msg} at line {e.lineno}") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object ({what}), found {type(data).__name__}")
    return data


def _is_diffusers_dit_index(index: dict[str, Any]) -> bool:
    tr = index.get("transformer")
    return isinstance(tr, list) and len(tr) == 2 and tr[0] == "diffusers" and tr[1] == "DiTTransformer2DModel"


def pipeline_index(folder: Path) -> dict[str, Any]:
    return read_json(folder / "model_index.json", "a pipeline's model_index.json")


def _folder_spec(p: Path) -> Spec:
    if (p / "model_index.json").is_file():
        index = pipeline_index(p)
        if _is_diffusers_dit_index(index):
            return Spec(get_family("dit"), DIFFUSERS_DIT_FOLDER, path=p)
        fam = family_of_class(index.get("_class_name"))
        if fam is None:
            raise UserError(f"{p}: unknown pipeline class {index.get('_class_name')!r} in model_index.json")
        return Spec(fam, PIPELINE_FOLDER, path=p)
    if (p / "config.json").is_file():
        cfg = read_json(p / "config.json", "a model's config.json")
        fam = family_of_class(cfg.get("_class_name"))
        if fam is not None:
            return Spec(fam, COMPONENT_FOLDER, path=p)
        if isinstance(cfg.get("model_type"), str):  # a transformers model folder: a text model
            return Spec(_text_family(), TRANSFORMERS_FOLDER, path=p)
        raise UserError(f"{p}: config.json names no model class mgen knows ({cfg.get('_class_name')!r})")
    raise UserError(f"{p}: not a model folder (no model_index.json or config.json)")


def _text_family() -> Family:
    return next(f for f in FAMILIES.values() if f.kind == "text")


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file ({} for other files); a corrupt file is a WeightsError."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def _family_from_metadata(meta: dict[str, str]) -> Family | None:
    for key in ("mgen_family", "family"):
        fam = family_of_tag(meta.get(key))
        if fam is not None:
            return fam
    if "config" in meta:
        try:
            return family_of_class(json.loads(meta["config"]).get("_class_name"))
        except (ValueError, AttributeError):
            return None
    return None


def _sniff(p: Path, families: Iterable[Family]) -> Family | None:
    """The family whose ``looks_like`` accepts the checkpoint at ``p`` (tokenizers read from bare official files)."""
    candidates = [f for f in families if f.detect]
    if not candidates:
        return None
    ckpt = hub.load_checkpoint(p)
    state = hub.iter_state_dicts(ckpt, ("state_dict", "model", "model_ema", "ema")) or ckpt
    for f in candidates:
        try:
            if import_target(f.detect)(state):
                return f
        except (ImportError, AttributeError):  # a family whose detector is not available
            continue
    return None


def _file_spec(p: Path, want: str | None) -> Spec:
    if p.suffix in (".yaml", ".yml"):
        entry = registry.load_config_file(p)
        return Spec(get_family(entry.family), YAML, entry=entry, path=_entry_weights(entry, None, required=False))
    fam = _family_from_metadata(safetensors_metadata(p))
    if fam is None:
        pool = [f for f in FAMILIES.values() if want is None or (f.is_tokenizer == (want == "tokenizer"))]
        fam = _sniff(p, pool) if p.suffix != ".safetensors" or want == "tokenizer" else None
    if fam is None:
        raise UserError(f"{p}: cannot tell which model this file holds; name it: --model NAME --weights {p}")
    return Spec(fam, FILE, path=p)


def _entry_weights(entry: registry.ModelEntry, weights: str | os.PathLike | None, required: bool = True) -> Path | None:
    """The weights of a registry entry: ``weights`` if given (must exist), else the first place that has them."""
    if weights is not None:
        wp = Path(os.fspath(weights)).expanduser()
        if not wp.exists():
            raise WeightsError(f"{wp}: no such weights file or folder")
        return wp
    w = entry.weights
    if not (w.package or w.filename or w.hf_repo or w.url):
        return None  # parameter-free (e.g. the patch tokenizer): built from its arch
    found = hub.find_weights(entry)
    if found is None and required:
        looked = "; ".join(c.label for c in hub.candidates(entry)) or "nowhere"
        raise WeightsError(f"{entry.name}: weights not found (looked in: {looked}); to provide them, {hub.how_to_get(entry)}")
    return found


def resolve(name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None, config: Any = None,
            want: str | None = None, missing_ok: bool = False) -> Spec:
    """Classify ``name_or_path`` (see the module docstring). ``weights`` replaces the weights a name would find;
    ``config`` names the architecture of a bare file (a registry name or YAML path). ``want``: "generator" or
    "tokenizer", which narrows how a bare official checkpoint is recognised and checks the result. ``missing_ok``: a
    registry name whose weights are not found still resolves (its family and entry), with the reason in
    ``Spec.missing`` — so a caller can check everything else first and name every missing file in one line."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.fspath(name_or_path):
        raise UserError(f"expected a model name or path, got {name_or_path!r}")
    s = os.fspath(name_or_path)
    p = Path(s).expanduser()
    # A local path wins, except that a bare registered name (no separator) means the registry entry.
    is_path = p.exists() and (isinstance(name_or_path, os.PathLike) or os.sep in s or not _registered(s))
    if is_path:
        if weights is not None and p.is_file() and p.suffix not in (".yaml", ".yml"):
            raise UserError(f"{p}: pass weights= only with a model name or a YAML config")
        if config is not None and p.is_file() and p.suffix not in (".yaml", ".yml"):
            entry = _config_entry(config)
            spec = Spec(get_family(entry.family), FILE, entry=entry, path=p)
        elif p.is_dir():
            spec = _folder_spec(p)
            if config is not None and spec.layout == COMPONENT_FOLDER:  # the config adds sampler / tokenizer
                spec = Spec(spec.family, COMPONENT_FOLDER, entry=_config_entry(config), path=p)
        else:
            spec = _file_spec(p, want)
            if spec.layout == YAML and weights is not None:
                spec = Spec(spec.family, YAML, entry=spec.entry, path=_entry_weights(spec.entry, weights))
    elif os.sep in s or s.endswith((".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".yaml", ".yml", ".json")):
        raise WeightsError(f"{p}: no such file or folder")
    else:
        entry = registry.get(s)
        try:
            spec = Spec(get_family(entry.family), NAME, entry=entry, path=_entry_weights(entry, weights))
        except WeightsError as e:
            if not missing_ok:
                raise
            spec = Spec(get_family(entry.family), NAME, entry=entry, missing=str(e))
    _check_want(spec, want, s)
    return spec


def _config_entry(config: Any) -> registry.ModelEntry:
    if isinstance(config, registry.ModelEntry):
        return config
    c = os.fspath(config)
    if c.endswith((".yaml", ".yml")):
        return registry.load_config_file(c)
    return registry.get(c)


def _registered(name: str) -> bool:
    try:
        registry.get(name)
        return True
    except UserError:
        return False


def _check_want(spec: Spec, want: str | None, what: str) -> None:
    if want == "tokenizer" and not spec.family.is_tokenizer:
        raise UserError(f"{what} is a {spec.family.name!r} model, not a tokenizer")
    if want == "generator" and spec.family.is_tokenizer:
        raise UserError(f"{what} is a tokenizer ({spec.family.name}), not a generator; pick a generator model")


def component_folder(spec: Spec, family: Family | None = None) -> Path:
    """For a pipeline folder, the sub-folder holding the component of ``family`` (default: the spec's)."""
    assert spec.path is not None
    fam = family or spec.family
    index = pipeline_index(spec.path)
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[1] is None:
            continue
        if family_of_class(value[1]) is fam:
            return spec.path / name
    raise UserError(f"{spec.path}: this pipeline folder holds no {fam.name} component")


def build_component(spec: Spec, **kwargs: Any) -> Any:
    """The model (generator or tokenizer) a spec describes, loaded with its family's class."""
    if spec.missing:
        raise WeightsError(spec.missing)
    cls = spec.family.model_class()
    if spec.layout == PIPELINE_FOLDER:
        return cls.from_pretrained(component_folder(spec), **kwargs)
    if spec.layout == DIFFUSERS_DIT_FOLDER:
        assert spec.path is not None
        return cls.from_pretrained(spec.path / "transformer", **kwargs)
    if spec.path is None:
        if spec.entry is None:
            raise WeightsError(f"{spec.family.name}: no weights to load")
        model = cls.from_arch(dict(spec.entry.arch))
        dtype = kwargs.get("torch_dtype")
        return (model.to(dtype) if dtype is not None else model).eval()
    if spec.layout in (COMPONENT_FOLDER, TRANSFORMERS_FOLDER):
        return cls.from_pretrained(spec.path, **kwargs)
    return cls.from_pretrained(spec.path, config=spec.config_hint, **kwargs)
