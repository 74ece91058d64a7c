""":func:`load_pipeline`: any generator in the registry, a YAML config, a saved pipeline folder, a diffusers DiT
folder or an official file → a ready pipeline, through :mod:`mgen.resolver` and the families table.

Nothing here knows a family by name: the family's pipeline class (``Family.pipeline``) builds itself from a
resolved :class:`~mgen.resolver.Spec` with its ``from_spec`` class method (docs/ARCHITECTURE.md, "Resolver").
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mgen.errors import UserError
from mgen.families import Family
from mgen.resolver import resolve

#: keyword arguments of diffusers' ``DiffusionPipeline.from_pretrained`` that a caller may pass through mgen
DIFFUSERS_LOAD_KWARGS = frozenset({
    "torch_dtype", "device_map", "low_cpu_mem_usage", "variant", "use_safetensors", "local_files_only", "cache_dir",
    "revision", "max_memory", "offload_folder", "offload_state_dict", "provider", "sess_options", "use_onnx",
    "dduf_file", "quantization_config", "dtype",
})


def diffusers_dtype_kwargs(load_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``torch_dtype`` under the name the installed diffusers reads (0.42 renamed it ``dtype`` and warns on the old
    name; older versions know only ``torch_dtype``)."""
    out = dict(load_kwargs)
    dtype = out.pop("torch_dtype", None)
    dtype = out.pop("dtype", None) if dtype is None else (out.pop("dtype", None) or dtype)
    if dtype is None:
        return out
    try:
        from diffusers.utils import deprecation_utils

        renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    except ImportError:  # pragma: no cover - very old diffusers
        renamed = False
    out["dtype" if renamed else "torch_dtype"] = dtype
    return out


def split_load_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diffusers loading kwargs, sampler overrides)."""
    load = {k: v for k, v in kwargs.items() if k in DIFFUSERS_LOAD_KWARGS}
    rest = {k: v for k, v in kwargs.items() if k not in DIFFUSERS_LOAD_KWARGS}
    return load, rest


def parse_dtype(dtype: Any) -> torch.dtype | None:
    """``torch.bfloat16`` / ``"bf16"`` / ``"bfloat16"`` / ``"fp32"`` … → a torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}
    if isinstance(dtype, str) and dtype.lower() in names:
        return names[dtype.lower()]
    raise UserError(f"unknown dtype {dtype!r}; choose fp32, bf16 or fp16")


def load_pipeline(name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None,
                  tokenizer_weights: str | os.PathLike | torch.nn.Module | None = None, device: Any = None,
                  **overrides: Any) -> Any:
    """The pipeline for any generator: a registry name (``mar-digits``, ``dlm-text``, ``joint-dlm-text`` …), a YAML
    config, a folder written by ``save_pretrained``, a diffusers ``DiTPipeline`` folder, or an official file
    (with ``config=NAME``).

    ``weights`` / ``tokenizer_weights`` replace the generator's / tokenizer's files a name would find (a tokenizer
    module may be given as ``tokenizer_weights`` too); ``device`` moves the result; ``torch_dtype`` (and diffusers'
    other loading options) are honoured; other ``overrides`` are the sampler's settings (``num_steps``, ``cfg``,
    ``num_inference_steps``, ``guidance_scale`` …) and ``config`` names the architecture of a bare file.
    """
    config = overrides.pop("config", None)
    pipeline_cls = overrides.pop("pipeline_cls", None)
    load_kwargs, sampler_overrides = split_load_kwargs(overrides)
    for key in ("torch_dtype", "dtype"):
        if key in load_kwargs:
            load_kwargs["torch_dtype"] = parse_dtype(load_kwargs.pop(key))
    spec = resolve(name_or_path, weights, config=config, want=None, missing_ok=True)
    family: Family = spec.family
    if family.is_tokenizer:
        raise UserError(f"{os.fspath(name_or_path)} is a tokenizer ({family.name}), not a generator; pick a generator model")
    cls = pipeline_cls or family.pipeline_class()
    pipe = cls.from_spec(spec, tokenizer=tokenizer_weights, **load_kwargs, **sampler_overrides)
    if device is not None:
        pipe = pipe.to(device)
    return pipe
