"""Real diffusion / masked LM checkpoints from a local folder, behind mgen's text-generator interface.

Every adapter returns *position-aligned* logits (row i predicts token i) from
``forward(input_ids, attention_mask)`` and exposes ``mask_id`` / ``eos_id`` / ``pad_id``, so the samplers in
:mod:`mgen.samplers.dlm` drive them unchanged.

- ``AutoModelForMaskedLM`` folders (BERT, RoBERTa, ModernBERT, …): logits are already aligned; the [MASK]
  logit is set to the dtype's minimum (the model saw [MASK] only as an input).
- LLaDA (Nie et al. 2025; ``model_type: llada``, custom code ``modeling_llada.py``): aligned logits, mask id
  126336 (github.com/ML-GSAI/LLaDA, generate.py).
- Dream (Ye et al. 2025; ``model_type: Dream``, custom code): Dream was initialised from an autoregressive LM and
  keeps its next-token layout — the logit for position i sits at row i−1. Dream's own sampler re-aligns with
  ``cat([logits[:, :1], logits[:, :-1]])`` (github.com/HKUNLP/Dream, ``generation_utils.py``); we do the same.
  Its attention mask is the 4-D bidirectional mask of real tokens and positions start at the first real token.

Folders whose config points at custom Python code (``auto_map`` with a ``model_type`` transformers does not
know) only load with ``trust_remote_code=True`` — the code in the folder runs in this process, so the user has
to opt in (``--trust-remote-code``); it is never on by default.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mgen.errors import UserError, WeightsError
from mgen.models import diffusion_gemma, llada2

LLADA_MASK_ID = 126336  # github.com/ML-GSAI/LLaDA generate.py: mask_id=126336
DREAM_MASK_ID = 151666  # github.com/HKUNLP/Dream generation_config: mask_token_id=151666
SHIFTED_TYPES = {"dream"}
LLADA_TYPES = {"llada", "lladamoe", "llada2", "llada_moe"}


def shift_logits_right(logits: torch.Tensor) -> torch.Tensor:
    """Next-token layout → aligned: row i takes row i−1; row 0 keeps its own (Dream's generation_utils)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{folder} is not a model folder (no config.json)") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is not valid JSON ({e})") from None


def needs_remote_code(config: dict[str, Any]) -> bool:
    """True when the folder's model class is custom code shipped in the folder."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    mt = config.get("model_type")
    return bool(config.get("auto_map")) and mt not in CONFIG_MAPPING


def detect_kind(config: dict[str, Any]) -> str:
    mt = str(config.get("model_type", "")).lower()
    if mt in SHIFTED_TYPES:
        return "dream"
    if mt in LLADA_TYPES:
        return "llada"
    return "masked_lm"


class HFDiffusionLM(nn.Module):
    """A transformers model with aligned logits and the ids the samplers need."""

    def __init__(self, model: nn.Module, mask_id: int, eos_id: int, pad_id: int, shift_logits: bool = False,
                 kind: str = "masked_lm") -> None:
        super().__init__()
        self.model = model
        self.mask_id, self.eos_id, self.pad_id = int(mask_id), int(eos_id), int(pad_id)
        self.shift_logits = shift_logits
        self.kind = kind

    @property
    def dtype(self) -> torch.dtype:
        """The wrapped model's parameter dtype (``pipe.dtype`` reads it, as of a ModelMixin)."""
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self.kind == "dream":
            # Dream's generation_utils: "full" without padding; else the (B,1,N,N) mask of real-token pairs and
            # positions counted from each row's first real token (pads get position 1)
            if attention_mask is None or bool(attention_mask.all()):
                kwargs["attention_mask"] = "full"
            else:
                m = attention_mask.bool()
                kwargs["attention_mask"] = m[:, None, :, None] & m[:, None, None, :]
                kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).masked_fill(~m, 1)
        elif attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        out = self.model(input_ids=input_ids, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if self.kind == "masked_lm":
            # BERT-style models learnt [MASK] as an input only: give it no probability (MDLM's SUBS, as our own
            # model). LLaDA / Dream logits stay untouched, exactly what their official samplers see.
            logits = logits.index_fill(-1, torch.tensor([self.mask_id], device=logits.device),
                                       torch.finfo(logits.dtype).min)
        return shift_logits_right(logits) if self.shift_logits else logits


@dataclass
class HFTextTokenizer:
    """``transformers`` tokenizer with the encode/decode and special ids the text pipeline uses."""

    tokenizer: Any
    mask_id: int
    eos_id: int
    pad_id: int

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int], skip_special: bool = True, skip_special_tokens: bool | None = None) -> str:
        """Text of ``ids``; the mask / EOS / pad ids and special tokens dropped unless ``skip_special`` is False
        (``skip_special_tokens``: transformers' name for the same switch)."""
        if skip_special_tokens is not None:
            skip_special = skip_special_tokens
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in (self.mask_id, self.eos_id, self.pad_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special)


def load_hf_dlm(folder: str | os.PathLike, trust_remote_code: bool = False, shift_logits: bool | None = None,
                mask_id: int | None = None, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
                ) -> tuple[HFDiffusionLM, HFTextTokenizer]:
    """Load a local transformers folder (masked LM, LLaDA or Dream) as an aligned-logits text generator.

    ``shift_logits`` overrides the detection (Dream: shifted; others: aligned). Custom-code folders need
    ``trust_remote_code=True``; without it this raises a :class:`UserError` saying why.
    """
    import transformers

    folder = Path(folder)
    config = read_config(folder)
    # uniform-state DiffusionGemma and LLaDA2 (causal-LM auto class) are not masked LMs: their own loaders
    if diffusion_gemma.looks_like_config(config):
        return diffusion_gemma.load_diffusion_gemma(folder, dtype=dtype, device=device)
    if llada2.looks_like_config(config):
        return llada2.load_llada2(folder, trust_remote_code=trust_remote_code, dtype=dtype, device=device)
    kind = detect_kind(config)
    remote = needs_remote_code(config)
    if remote and not trust_remote_code:
        raise UserError(
            f"{folder} defines its model with custom Python code (model_type {config.get('model_type')!r}, "
            "auto_map in config.json); loading it runs that code in this process. "
            "Pass --trust-remote-code if you trust this folder")
    common = dict(trust_remote_code=trust_remote_code, local_files_only=True)
    if dtype is not None:
        common["dtype"] = dtype
    try:
        if kind == "masked_lm" and not remote:
            model = transformers.AutoModelForMaskedLM.from_pretrained(str(folder), **common)
        else:
            auto = config.get("auto_map") or {}
            cls = transformers.AutoModelForMaskedLM if "AutoModelForMaskedLM" in auto else transformers.AutoModel
            if not remote and "AutoModelForMaskedLM" not in auto:
                cls = transformers.AutoModelForMaskedLM
            model = cls.from_pretrained(str(folder), **common)
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot load the model in {folder}: {str(e).splitlines()[0]}") from None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), **{k: v for k, v in common.items() if k != "dtype"})
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot load the tokenizer in {folder}: {str(e).splitlines()[0]}") from None
    model = model.to(device).eval()
    if mask_id is None:
        mask_id = config.get("mask_token_id")
        if mask_id is None:
            mask_id = getattr(tok, "mask_token_id", None)
        if mask_id is None:
            mask_id = {"llada": LLADA_MASK_ID, "dream": DREAM_MASK_ID}.get(kind)
        if mask_id is None:
            raise UserError(f"{folder}: no mask token id in config.json or the tokenizer; pass mask_id")
    eos = tok.eos_token_id if tok.eos_token_id is not None else getattr(tok, "sep_token_id", None)
    eos = config.get("eos_token_id", eos) if eos is None else eos
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    eos = pad if eos is None else eos
    if isinstance(eos, list):
        eos = eos[0]
    shift = kind == "dream" if shift_logits is None else shift_logits
    wrapped = HFDiffusionLM(model, mask_id, eos, pad, shift_logits=shift, kind=kind)
    return wrapped, HFTextTokenizer(tok, int(mask_id), int(eos), int(pad))
