"""LLaDA2 checkpoints (inclusionAI LLaDA2.0 / 2.1: ``model_type: llada2_moe``) behind mgen's text interface.

LLaDA2 folders define their network in custom code (``modeling_llada2_moe.py``, ``auto_map`` →
``AutoModelForCausalLM``), so they load only with ``trust_remote_code=True`` (the folder's code runs in this
process; never on by default) and ``local_files_only=True``. The network is bidirectional within the window it
is shown and its logits are position-aligned; the mask token is id 156895 (``mask_token_id`` of the LLaDA2
tokenizer / diffusers' ``LLaDA2Pipeline`` example) unless the folder says otherwise. Its decoding is
:class:`mgen.samplers.llada2.LLaDA2Sampler` (diffusers' ``LLaDA2Pipeline``), which passes a 2-D attention mask
and absolute ``position_ids``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mgen.errors import UserError, WeightsError

LLADA2_TYPES = ("llada2_moe", "llada2")
LLADA2_MASK_ID = 156895  # inclusionAI LLaDA2.0 tokenizer <|mask|>


def looks_like_config(config: Mapping[str, Any]) -> bool:
    """True for a LLaDA2 ``config.json`` mapping (pure inspection)."""
    return str(config.get("model_type", "")).lower() in LLADA2_TYPES


def is_llada2_folder(folder: str | os.PathLike) -> bool:
    path = Path(folder) / "config.json"
    try:
        return path.is_file() and looks_like_config(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return False


class LLaDA2LM(nn.Module):
    """A loaded LLaDA2 causal-LM class as a text generator: aligned logits, ``mask_id`` / ``eos_id`` / ``pad_id``."""

    default_sampler = "llada2"  # the pipeline's sampler for this model (mgen.pipelines.dlm.SAMPLERS)

    def __init__(self, model: nn.Module, mask_id: int, eos_id: int | None, pad_id: int | None) -> None:
        super().__init__()
        self.model = model
        self.mask_id = int(mask_id)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.pad_id = None if pad_id is None else int(pad_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        out = self.model(input_ids=input_ids, **kwargs)
        return out.logits if hasattr(out, "logits") else out[0]


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, (list, tuple)) and v else v


def load_llada2(folder: str | os.PathLike, trust_remote_code: bool = False, dtype: torch.dtype | None = None,
                device: str | torch.device = "cpu") -> tuple[LLaDA2LM, Any]:
    """(model, tokenizer) of a local LLaDA2 folder (``AutoModelForCausalLM``; its code needs opting in)."""
    import transformers

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{folder}: no readable config.json ({e})") from None
    if not looks_like_config(config):
        raise WeightsError(f"{folder} is not a LLaDA2 folder (model_type {config.get('model_type')!r})")
    if not trust_remote_code:
        raise UserError(f"{folder} is a LLaDA2 checkpoint (model_type {config.get('model_type')!r}) whose model is "
                        "custom Python code in the folder; loading it runs that code. Pass --trust-remote-code "
                        "if you trust this folder")
    common: dict[str, Any] = dict(trust_remote_code=True, local_files_only=True)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), **common)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{folder}: cannot load the LLaDA2 tokenizer: {str(e).splitlines()[0]}") from None
    kwargs = dict(common, **({"dtype": dtype} if dtype is not None else {}))
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, ImportError, AttributeError) as e:
        raise WeightsError(f"cannot load the LLaDA2 model in {folder}: {str(e).splitlines()[0]}") from None
    mask_id = config.get("mask_token_id", getattr(tok, "mask_token_id", None))
    mask_id = LLADA2_MASK_ID if mask_id is None else mask_id
    eos = _first(getattr(tok, "eos_token_id", None))
    eos = _first(config.get("eos_token_id")) if eos is None else eos
    pad = getattr(tok, "pad_token_id", None)
    pad = _first(config.get("pad_token_id", eos)) if pad is None else pad
    return LLaDA2LM(model.to(device).eval(), mask_id, eos, pad), tok
