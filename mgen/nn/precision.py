"""Reduced precision with float32 islands: the parts of a model that must stay float32 when the rest of it
is cast to bfloat16 / float16 (issue 15; docs/ARCHITECTURE.md, "The three protocols").

diffusers' ``_keep_in_fp32_modules`` is honoured only while loading with ``torch_dtype=torch.float16``; a plain
``model.to(torch.bfloat16)`` casts everything (and logs a warning). :class:`KeepFP32Mixin` instead hooks
``nn.Module._apply`` (which ``.to``, ``.half``, ``.bfloat16``, ``.cuda`` … all go through): the tensors it
names are taken out of the cast and stay float32 — their values are not rounded through 16 bits — whatever
path made the model 16-bit (``.to(dtype)``, ``pipe.to(dtype)``, ``from_pretrained(..., torch_dtype=...)``).
The model's forward is then responsible for casting between the float32 parts and the rest.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import torch
from torch import nn

HALF_DTYPES = (torch.float16, torch.bfloat16)


class KeepFP32Mixin:
    """Mixin for an ``nn.Module``: tensors named by :meth:`keeps_fp32` stay float32 under 16-bit casts.

    ``_keep_fp32`` lists module-path components (e.g. ``"t_embedder"`` keeps ``t_embedder.mlp.0.weight``
    and ``block_t_embedders.3.mlp.2.bias`` only when ``"block_t_embedders"`` is listed too, since whole
    components are compared) and buffer names (``"pos_embed"``). A subclass may override
    :meth:`keeps_fp32` for finer rules (e.g. only some blocks' modulation).
    """

    _keep_fp32: tuple[str, ...] = ()

    def keeps_fp32(self, name: str) -> bool:
        """Whether the parameter or buffer ``name`` (a ``state_dict``-style dotted name) stays float32."""
        return any(part in self._keep_fp32 for part in name.split("."))

    def fp32_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) of every parameter and buffer that stays float32."""
        assert isinstance(self, nn.Module)
        for name, t in list(self.named_parameters()) + list(self.named_buffers()):
            if self.keeps_fp32(name):
                yield name, t

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """``nn.Module.to``; silences diffusers 0.42's ModelMixin warning that is logged on every dtype cast
        ("modules … should be kept in float32: []" — it tests ``[] is not None``): this class keeps its
        float32 parts itself, on this path too."""
        log = logging.getLogger("diffusers.models.modeling_utils")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            return super().to(*args, **kwargs)  # type: ignore[misc]
        finally:
            log.setLevel(level)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:  # type: ignore[override]
        kept = {name: t.detach() for name, t in self.fp32_tensors() if t.dtype == torch.float32}
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        for name, old in kept.items():
            module_name, _, leaf = name.rpartition(".")
            module = self.get_submodule(module_name) if module_name else self  # type: ignore[attr-defined]
            new = getattr(module, leaf)
            if new is None or new.dtype not in HALF_DTYPES:
                continue
            value = new.float() if (old.is_meta or new.is_meta) else old.to(device=new.device)
            if isinstance(new, nn.Parameter):
                new.data = value
                if new.grad is not None and new.grad.dtype in HALF_DTYPES:
                    new.grad = new.grad.float()
            else:
                module._buffers[leaf] = value
        return out
