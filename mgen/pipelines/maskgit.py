"""Class-conditional MaskGIT generation: all-masked code grid → (MaskGIT decoder) → codes → VQ decoder → images.

Chang et al., "MaskGIT: Masked Generative Image Transformer", CVPR 2022 (decoding: §3.2, Alg. 1), with
the valeoai/Maskgit-pytorch ImageNet checkpoint and its VQGAN, or the shipped ``maskgit-digits``.
The call signature follows mgen's other class-conditional pipelines (``class_labels, guidance_scale,
generator, num_inference_steps, output_type, return_dict`` plus the decoder's own settings).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from mgen.errors import UserError

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def format_images(images: torch.Tensor, output_type: str) -> Any:
    """Images in [-1, 1] → "pt"/"np" in [0, 1] or PIL images (diffusers' conventions)."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    arr = x.cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    return DiffusionPipeline.numpy_to_pil(arr)


def as_labels(class_labels: Sequence[int] | torch.Tensor | int | None, num_classes: int,
              device: torch.device) -> torch.Tensor | None:
    if class_labels is None:
        return None
    if isinstance(class_labels, int):
        class_labels = [class_labels]
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).to(device)
    if labels.numel() == 0:
        raise UserError("no class labels given")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise UserError(f"class labels must lie in [0, {num_classes - 1}], got {labels.tolist()[:8]}")
    return labels


#: the pipelines' (and MAR's) argument names -> sampler fields
ALIASES = {"num_inference_steps": "num_steps", "steps": "num_steps", "guidance_scale": "cfg",
           "guidance_schedule": "cfg_schedule"}


def sampler_aliases(sampler_cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """Sampler overrides with ``None`` values dropped and pipeline-style names mapped to sampler fields
    (``num_inference_steps`` → ``num_steps``, ``guidance_scale`` → ``cfg``, ``temperature`` → ENAT's
    ``samp_temp``)."""
    known = {f.name for f in dataclasses.fields(sampler_cls)}
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        if v is None:
            continue
        k = ALIASES.get(k, k)
        if k == "temperature" and "temperature" not in known:
            k = "samp_temp"
        if k == "cfg_schedule" and k not in known:
            if v != "linear":
                raise UserError(f"this model's guidance is linear in the step (official schedule); got {v!r}")
            continue
        out[k] = v
    return out


class MaskGITPipeline(DiffusionPipeline):
    """MaskGIT transformer + VQ tokenizer + :class:`mgen.samplers.maskgit.MaskGITSampler`."""

    family = "maskgit"

    def __init__(self, transformer: torch.nn.Module, vqvae: torch.nn.Module, sampler: Any = None) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, vqvae=vqvae)
        self.sampler = sampler if sampler is not None else self._sampler_cls()()

    # -- family hooks (ENAT overrides) ------------------------------------------------------------
    @staticmethod
    def _model_cls() -> type:
        from mgen.models.maskgit import MaskGITTransformer

        return MaskGITTransformer

    @staticmethod
    def _sampler_cls() -> type:
        from mgen.samplers.maskgit import MaskGITSampler

        return MaskGITSampler

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
                        tokenizer: str | os.PathLike | torch.nn.Module | None = None, config: str | None = None,
                        device: str | torch.device = "cpu", **sampler_overrides: Any) -> "MaskGITPipeline":
        """A registry name (``maskgit``, ``maskgit-digits``) or a checkpoint path / folder (+ ``config``,
        a registry name or YAML file describing it), its VQ tokenizer (the config's ``tokenizer`` unless
        given: a name, path or tokenizer module) and sampler overrides (``num_steps``, ``cfg``, …)."""
        from mgen import registry

        model = model or cls.family
        entry = None
        if not os.path.exists(os.fspath(model)):
            entry = registry.get(str(model))
            if entry.family != cls.family:
                raise UserError(f"{entry.name} is a {entry.family!r} model, not {cls.family!r}")
        elif config is not None:
            entry = registry.load_config_file(config) if str(config).endswith((".yaml", ".yml")) else registry.get(config)
        arch = dict(entry.arch) if entry is not None else None
        transformer = cls._model_cls().from_pretrained(model, config=arch, weights=weights)
        tok = tokenizer if tokenizer is not None else (entry.tokenizer if entry else None)
        if tok is None:
            raise UserError(f"no VQ tokenizer for {model}: pass --tokenizer NAME|PATH (e.g. maskgit-vqgan)")
        if not isinstance(tok, torch.nn.Module):
            from mgen.tokenizers.vq import VQTokenizer

            tok = VQTokenizer.from_pretrained(tok)
        if getattr(tok, "codebook_size", transformer.codebook_size) != transformer.codebook_size:
            raise UserError(f"tokenizer has {tok.codebook_size} codes but the generator expects {transformer.codebook_size}")
        scls = cls._sampler_cls()
        sampler = scls.from_mapping(dict(entry.sampler) if entry else {}, **sampler_aliases(scls, sampler_overrides))
        return cls(transformer.eval(), tok.eval(), sampler).to(device)

    def to(self, *args: Any, **kwargs: Any) -> "MaskGITPipeline":
        for module in (self.transformer, self.vqvae):
            module.to(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def num_classes(self) -> int:
        return int(self.transformer.num_classes)

    def make_sampler(self, **overrides: Any) -> Any:
        """The pipeline's sampler with the non-None ``overrides`` applied (validated)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        s = dataclasses.replace(self.sampler, **values)
        s.validate()
        return s

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int] | torch.Tensor | int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        batch_size: int | None = None,
        recap: Any = None,
        **decoder_settings: Any,
    ) -> ImagePipelineOutput | tuple:
        """One image per class label (``class_labels=None`` + ``batch_size``: unconditional); the same
        signature as :class:`mgen.pipelines.mar.MARPipeline`. ``None`` settings come from the model's
        config. ``guidance_schedule``: "linear" or "constant" (MaskGIT; ENAT's is linear);
        ``temperature``: the sampling temperature (ENAT: ``samp_temp``, annealed).
        ``decoder_settings``: the sampler's other fields (MaskGIT: schedule, choice_temperature, top_k,
        top_p; ENAT: mask_temp, reuse, top_k, top_p). ``output_type``: pil, np (B, H, W, 3 in [0, 1]),
        pt (B, 3, H, W in [0, 1]) or latent (the code grids B×h×w). ``recap``: context-feature reuse
        (:func:`mgen.samplers.recap.wrap`: None, True, or ``{"pre_full_steps", "cache_steps"}``)."""
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
        known = {f.name for f in dataclasses.fields(self.sampler)}
        bad = set(decoder_settings) - known
        if bad:
            raise UserError(f"unknown decoder settings {sorted(bad)}; allowed: {sorted(known)}")
        overrides = dict(decoder_settings, cfg=guidance_scale, num_steps=num_inference_steps)
        if guidance_schedule is not None:
            if "cfg_schedule" in known:
                overrides["cfg_schedule"] = guidance_schedule
            elif guidance_schedule != "linear":
                raise UserError(f"{self.family} guidance is linear in the step (official schedule); got {guidance_schedule!r}")
        if temperature is not None:
            overrides["temperature" if "temperature" in known else "samp_temp"] = temperature
        sampler = self.make_sampler(**overrides)
        if recap is not None:
            from mgen.samplers.recap import wrap

            sampler = wrap(sampler, recap)
        labels = as_labels(class_labels, self.transformer.num_classes, self.device)
        if labels is None and batch_size is None:
            raise UserError("pass class_labels (or batch_size for unconditional samples)")
        codes = sampler.sample(self.transformer, labels, batch_size=batch_size, generator=generator)
        images: Any = codes if output_type == "latent" else format_images(self.vqvae.decode(codes), output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
