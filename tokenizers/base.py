"""The Tokenizer protocol (docs/ARCHITECTURE.md, "The three protocols") and what the tokenizer classes share.

A tokenizer turns images in [-1, 1] of shape (B, 3, H, W) into either discrete code indices (B, h, w)
or the *unscaled* continuous latent mean (B, C, h, w), and back. Generators see
``latent * scaling_factor``; ``decode`` takes unscaled latents and returns the decoder's unclamped output.

Every tokenizer class is a diffusers ``ModelMixin + ConfigMixin``: ``save_pretrained`` is diffusers' own
(``config.json`` + ``diffusion_pytorch_model.safetensors``) and ``from_pretrained`` of such a folder delegates to
diffusers (:func:`load_saved_folder`); the other formats each class reads (official checkpoints, older mgen
files, diffusers/transformers folders of other classes) go through the class's own loaders. The helpers below
are the parts those loaders share: the loading keyword arguments diffusers' pipeline loader passes, registry
names, the ``config=`` argument, state-dict checks and float32 islands under ``.to(torch.bfloat16)``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from torch import nn

from mgen import hub, registry
from mgen.errors import UserError, WeightsError
from mgen.families import get_family
from mgen.resolver import read_json as resolver_read_json
from mgen.resolver import safetensors_metadata  # noqa: F401  (re-exported for the tokenizers)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

@runtime_checkable
class Tokenizer(Protocol):
    """What every mgen tokenizer provides."""

    scaling_factor: float

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) → indices (B, h, w) or unscaled latent mean (B, C, h, w)."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Indices or unscaled latents → images in [-1, 1], (B, 3, H, W)."""
        ...

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path, **kwargs: Any) -> "Tokenizer":
        ...

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> None:
        ...


# -- loading keyword arguments -------------------------------------------------------------------------------

def split_loading_kwargs(kwargs: Mapping[str, Any], what: str) -> tuple[torch.dtype | None, dict[str, Any]]:
    """``(torch_dtype, the kwargs for diffusers' loader)`` from a ``from_pretrained`` call.

    diffusers' pipeline loader passes its own loading arguments (``torch_dtype``, ``low_cpu_mem_usage``,
    ``device_map``, ``variant``, ``use_safetensors``, newer ones such as ``use_flashpack``): none of them fails.
    They are forwarded when a saved folder is read by diffusers and ignored on the other paths."""
    rest = dict(kwargs)
    dtype = rest.get("dtype") or rest.get("torch_dtype")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise UserError(f"{what}.from_pretrained: torch_dtype must be a torch.dtype, got {dtype!r}")
    return dtype, rest


def finish(model: nn.Module, torch_dtype: torch.dtype | None) -> nn.Module:
    """A loaded model in ``torch_dtype`` (float32 islands kept, :class:`Float32Islands`), in eval mode."""
    if torch_dtype is not None:
        nn.Module.to(model, torch_dtype)  # (ModelMixin.to would warn about an empty _keep_in_fp32_modules)
    return model.eval()


# -- folders, files, names and configs -----------------------------------------------------------------------

def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a config file; anything else is a one-line ``WeightsError`` (the resolver's reader)."""
    return resolver_read_json(path, "a config file", error=WeightsError)


def folder_of(p: Path) -> Path | None:
    """The model folder ``p`` names: ``p`` itself, or the folder of a ``diffusion_pytorch_model.safetensors`` /
    ``model.safetensors`` file next to a ``config.json``; None for a bare file."""
    if p.is_dir():
        return p
    if p.name in (WEIGHTS_NAME, "model.safetensors") and (p.parent / CONFIG_NAME).is_file():
        return p.parent
    return None


def metadata_config(path: Path) -> dict[str, Any] | None:
    """The config an mgen single-file ``.safetensors`` carries in its metadata (None when it has none)."""
    meta = safetensors_metadata(path)
    if "config" not in meta:
        return None
    try:
        cfg = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: the config in the file's metadata is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: the config in the file's metadata is not a JSON object")
    return cfg


def registry_entry(name: str, cls: type, what: str) -> Any:
    """The registry entry ``name`` after checking, in the families table, that ``cls`` is its family's model
    class (a name of another family is a one-line ``UserError`` before any weights are looked for)."""
    entry = registry.get(name)
    if get_family(entry.family).model_class_name != cls.__name__ and not _entry_selects(cls, entry):
        raise UserError(f"{name} is a {entry.family!r} model, not {what}")
    return entry


def _entry_selects(cls: type, entry: Any) -> bool:
    """A class may claim entries whose arch names it (``arch.network``), e.g. the MaskGIT (JAX) VQGAN."""
    network = getattr(cls, "arch_network", None)
    return network is not None and isinstance(entry.arch, Mapping) and entry.arch.get("network") == network


def resolve_name(name: str, cls: type, what: str) -> tuple[Any, Path]:
    """A registered name → (entry, local weights path), or the one-line error saying how to get the weights."""
    entry = registry_entry(name, cls, what)
    return entry, hub.resolve(name, what="tokenizer weights").path


def config_arch(config: Any, cls: type, what: str) -> dict[str, Any] | None:
    """The ``arch`` mapping a ``config=`` argument names: a registry name, a YAML file or a mapping (None: none)."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    c = os.fspath(config)
    if c.endswith((".yaml", ".yml")):
        return dict(registry.load_config_file(c).arch)
    return dict(registry_entry(c, cls, what).arch)


def init_fields(cls: type) -> list[str]:
    """The keyword arguments of ``cls.__init__`` (register_to_config keeps the signature)."""
    params = inspect.signature(cls.__init__).parameters
    return [n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def build_from_arch(cls: type, arch: Mapping[str, Any], what: str) -> Any:
    """``cls(**arch)`` with unknown keys and bad values reported as one ``UserError`` line."""
    if not isinstance(arch, Mapping):
        raise UserError(f"{what} arch: expected a mapping, got {type(arch).__name__}")
    fields = init_fields(cls)
    bad = sorted(str(k) for k in arch if k not in fields)
    if bad:
        raise UserError(f"{what} arch: unknown keys {bad}; allowed {sorted(fields)}")
    try:
        return cls(**dict(arch))
    except (TypeError, ValueError, KeyError) as e:
        if isinstance(e, (UserError, WeightsError)):
            raise
        raise UserError(f"{what} arch: {e}") from None


def config_kwargs(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a stored config that ``cls.__init__`` takes (private ``_`` keys and others dropped)."""
    fields = set(init_fields(cls))
    return {k: v for k, v in config.items() if k in fields and not str(k).startswith("_")}


def is_own_folder(folder: Path, cls: type) -> bool:
    """Whether ``folder`` was written by ``cls.save_pretrained`` (its config names the class)."""
    return (folder / CONFIG_NAME).is_file() and read_json(folder / CONFIG_NAME).get("_class_name") == cls.__name__


def load_saved_folder(cls: type, folder: Path, kwargs: Mapping[str, Any]) -> Any:
    """A folder written by ``cls.save_pretrained``, loaded by diffusers' ``ModelMixin.from_pretrained``
    (never from the network, safetensors only unless the caller says otherwise); failures become one
    ``WeightsError`` line naming the folder."""
    from diffusers.models.modeling_utils import ModelMixin  # (here: ``import mgen.tokenizers`` stays light)

    kw = dict(kwargs)
    kw["local_files_only"] = True
    kw.setdefault("use_safetensors", True)
    if not any((folder / n).is_file() for n in (WEIGHTS_NAME, "diffusion_pytorch_model.bin")) and not kw.get("variant"):
        raise WeightsError(f"{folder}: no weights file ({WEIGHTS_NAME})")
    try:
        model = ModelMixin.from_pretrained.__func__(cls, str(folder), **kw)
    except (UserError, WeightsError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, EnvironmentError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsError(f"{folder}: could not load the {cls.__name__} folder ({first[:300]})") from None
    check_loaded(model, str(folder))
    return model.eval()


def check_state_dict(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], what: str, target: str,
                     optional: Iterable[str] = ()) -> None:
    """``sd`` has exactly the keys and shapes of ``own`` (``optional`` keys may be absent) and finite values."""
    optional = set(optional)
    missing = [k for k in own if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise WeightsError(f"{what}: weights do not match the {target} config (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"{what}: {k} is not a tensor")
        if tuple(own[k].shape) != tuple(v.shape):
            raise WeightsError(f"{what}: {k} has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise WeightsError(f"{what}: parameter {k} contains NaN or infinite values")


def check_loaded(model: nn.Module, what: str) -> None:
    """Every parameter and buffer is materialised (not on the meta device) and finite."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.device.type == "meta":
            raise WeightsError(f"{what}: {name} is missing from the weights")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise WeightsError(f"{what}: parameter {name} contains NaN or infinite values")


def plain(value: Any) -> Any:
    """A config value as JSON-serialisable data (tuples → lists, recursively)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


# -- float32 islands under .to(bfloat16) ---------------------------------------------------------------------

class Float32Islands:
    """Mixin for ``nn.Module`` subclasses: the tensors named in ``_fp32_tensors`` (parameters or buffers of this
    module, e.g. a codebook or normalisation statistics) stay float32 under ``.to(dtype)`` / ``.half()`` /
    ``.bfloat16()``, exactly (the float32 values are kept, not rounded and cast back); device moves apply."""

    _fp32_tensors: tuple[str, ...] = ()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        saved = {}
        for name in self._fp32_tensors:
            t = self._parameters.get(name) if name in self._parameters else self._buffers.get(name)
            if t is not None and t.dtype == torch.float32 and t.device.type != "meta":
                saved[name] = t.detach()
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        for name, old in saved.items():
            cur = self._parameters.get(name) if name in self._parameters else self._buffers.get(name)
            if cur is None or cur.dtype == torch.float32 or not cur.is_floating_point() or cur.device.type == "meta":
                continue
            value = old.to(cur.device)
            if name in self._parameters:
                cur.data = value
            else:
                self._buffers[name] = value
        return out


class ArchAliasesMixin:
    """For ConfigMixin classes whose ``__init__`` also takes another spelling of the architecture (LDM names,
    listed in ``ignore_for_config``): ``from_config`` of a mapping in that spelling builds the model from it (via
    ``from_arch``) instead of ConfigMixin's dropping the unknown keys and building the default architecture."""

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        aliases = set(getattr(cls, "ignore_for_config", ()))
        if (isinstance(config, Mapping) and not return_unused_kwargs
                and not kwargs and "_class_name" not in config and aliases & set(config)):
            return cls.from_arch(config)  # type: ignore[attr-defined]
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)  # type: ignore[misc]
