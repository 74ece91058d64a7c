"""DiffusionGemma folders (transformers 5.24 ``DiffusionGemmaForBlockDiffusion``) behind mgen's text interface.

DiffusionGemma is a native transformers model (``model_type: diffusion_gemma``, no ``auto_map``), so a folder
loads with ``trust_remote_code=False`` and ``local_files_only=True``: no code from the folder runs and nothing
is downloaded. It has no mask token (uniform-state diffusion); its decoding is
:class:`mgen.samplers.diffusion_gemma.DiffusionGemmaSampler`, not the masked-LM samplers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mgen.errors import UserError, WeightsError

MODEL_TYPE = "diffusion_gemma"
HF_CLASS = "DiffusionGemmaForBlockDiffusion"  # the transformers class (5.24)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def looks_like_config(config: Mapping[str, Any]) -> bool:
    """True for a DiffusionGemma ``config.json`` mapping (pure inspection, nothing loaded)."""
    return str(config.get("model_type", "")).lower() == MODEL_TYPE


def is_diffusion_gemma_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder/config.json`` names a DiffusionGemma model."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        return looks_like_config(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return False


class DiffusionGemmaLM(nn.Module):
    """A loaded DiffusionGemma: the transformers model (``hf_model``) and the ids mgen's text path reads.

    ``mask_id`` is ``None`` — a uniform-state model has no mask token, so mask-based samplers refuse it.

    In a pipeline folder the component is the transformers model itself (``diffusers_component``: diffusers
    saves it with transformers' ``save_pretrained`` and ``model_index.json`` lists it as
    ``["transformers", "DiffusionGemmaForBlockDiffusion"]``); a pipeline given that model back wraps it again
    (:meth:`adapts`), so a loaded pipeline runs exactly as the one that was saved.
    """

    mask_id = None
    default_sampler = "diffusion_gemma"  # the pipeline's sampler for this model (mgen.pipelines.dlm.SAMPLERS)

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf_model = hf_model
        gen = getattr(hf_model, "generation_config", None)
        text = hf_model.config.get_text_config()
        eos = getattr(gen, "eos_token_id", None)
        eos = text.eos_token_id if eos is None else eos
        self.eos_token_id = eos
        self.eos_id = int(eos[0] if isinstance(eos, (list, tuple)) else eos) if eos is not None else None
        pad = getattr(gen, "pad_token_id", None)
        pad = text.pad_token_id if pad is None else pad
        self.pad_id = None if pad is None else int(pad)

    @classmethod
    def adapts(cls, module: Any) -> bool:
        """True for a bare transformers ``DiffusionGemmaForBlockDiffusion`` (what a pipeline folder loads)."""
        if isinstance(module, cls) or not isinstance(module, nn.Module):
            return False
        return type(module).__name__ == HF_CLASS and looks_like_config(
            {"model_type": getattr(getattr(module, "config", None), "model_type", "")})

    @property
    def diffusers_component(self) -> nn.Module:
        """The module a diffusers pipeline saves in this adapter's place (the transformers model)."""
        return self.hf_model

    @property
    def canvas_length(self) -> int:
        return int(self.hf_model.config.canvas_length)

    @property
    def config(self) -> Any:
        return self.hf_model.config

    @property
    def device(self) -> torch.device:
        return self.hf_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.hf_model(*args, **kwargs)


def load_diffusion_gemma(folder: str | os.PathLike, dtype: torch.dtype | None = None,
                         device: str | torch.device = "cpu", require_tokenizer: bool = True
                         ) -> tuple[DiffusionGemmaLM, Any]:
    """(model, tokenizer) of a local DiffusionGemma folder; no remote code, no network.

    A folder without tokenizer files raises one :class:`UserError` line (``require_tokenizer=False`` returns
    ``None`` for the tokenizer instead).
    """
    import transformers

    folder = Path(folder)
    if not is_diffusion_gemma_folder(folder):
        raise WeightsError(f"{folder} is not a DiffusionGemma folder (config.json model_type 'diffusion_gemma')")
    tokenizer = None
    has_tok = any((folder / f).is_file() for f in TOKENIZER_FILES)
    if require_tokenizer and not has_tok:
        raise UserError(f"{folder}: DiffusionGemma folder without a tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                        "copy the checkpoint's tokenizer files into it")
    common: dict[str, Any] = dict(trust_remote_code=False, local_files_only=True)
    if has_tok:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **common)
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"{folder}: cannot load the DiffusionGemma tokenizer: {str(e).splitlines()[0]}") from None
    kwargs = dict(common)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        hf = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot load the DiffusionGemma model in {folder}: {str(e).splitlines()[0]}") from None
    return DiffusionGemmaLM(hf.to(device).eval()), tokenizer
