"""MARPipeline: class-conditional image generation with MAR (Li et al. 2024) as a diffusers pipeline.

Components: ``tokenizer`` (KL-16 for ImageNet models, the pixel patch tokenizer for ``mar-digits``),
``transformer`` (:class:`mgen.models.mar.MAR`, with its diffusion-loss head) and ``scheduler`` (a diffusers
``DDPMScheduler`` that records the head's diffusion: 1000 cosine steps, learned-range variance, ε
prediction; sampling is respaced to ``head_steps``). The decoding loop is :class:`mgen.samplers.mar.MARSampler`;
latents are unscaled (÷ the tokenizer's scaling factor) before ``tokenizer.decode``, as the official
``main_mar.py`` does (``vae.decode(tokens / 0.2325)``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput

from mgen.errors import UserError, WeightsError

MAX_STEPS = 256


def head_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The head's diffusion as a diffusers scheduler config (IDDPM cosine = ``squaredcos_cap_v2``, learned range)."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         variance_type="learned_range", prediction_type="epsilon", clip_sample=False,
                         timestep_spacing="linspace")


def load_tokenizer(name_or_path: str | os.PathLike | torch.nn.Module, weights: str | os.PathLike | None = None) -> Any:
    """A tokenizer by registry name (``patch-digits``, ``kl16``) or path; ``weights`` overrides the file found by name."""
    if isinstance(name_or_path, torch.nn.Module):
        return name_or_path
    from mgen import registry

    p = Path(os.fspath(name_or_path)).expanduser()
    family = None
    if p.exists():
        if p.is_dir() and (p / "config.json").exists():
            import json

            cls = json.loads((p / "config.json").read_text()).get("_class_name")
            family = "patch" if cls == "PatchTokenizer" else "kl"
        elif p.suffix == ".json":
            family = "patch"
        else:
            family = "kl"
        target = p
    else:
        entry = registry.get(str(name_or_path))
        family = entry.family
        target = Path(weights) if weights is not None else entry.name
    if family == "patch":
        from mgen.tokenizers.patch import PatchTokenizer

        return PatchTokenizer.from_pretrained(target).eval()
    if family == "kl":
        from mgen.tokenizers.kl import KLTokenizer

        if weights is not None and not p.exists():
            tok = KLTokenizer.from_pretrained(Path(weights), scaling_factor=registry.get(str(name_or_path)).arch.get("scaling_factor"))
        else:
            tok = KLTokenizer.from_pretrained(target)
        return tok.eval()
    raise UserError(f"{name_or_path}: a {family!r} tokenizer cannot decode MAR's continuous tokens")


def _unscale(tokenizer: Any, z: torch.Tensor) -> torch.Tensor:
    if hasattr(tokenizer, "from_model"):
        return tokenizer.from_model(z)
    return z / float(tokenizer.scaling_factor)


class MARPipeline(DiffusionPipeline):
    """tokenizer + MAR transformer + head scheduler; ``__call__`` runs :class:`~mgen.samplers.mar.MARSampler`."""

    model_cpu_offload_seq = "transformer->tokenizer"

    def __init__(self, tokenizer: Any, transformer: Any, scheduler: DDPMScheduler | None = None) -> None:
        super().__init__()
        self.register_modules(tokenizer=tokenizer, transformer=transformer, scheduler=scheduler or head_scheduler())
        self.defaults: dict[str, Any] = {"num_steps": 64, "cfg": 1.0, "cfg_schedule": "linear", "temperature": 1.0,
                                         "head_steps": 100}
        self.last_sampler = None

    @property
    def num_classes(self) -> int:
        return int(self.transformer.num_classes)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return next(self.transformer.parameters()).device

    def to(self, *args: Any, **kwargs: Any) -> "MARPipeline":  # type: ignore[override]
        self.transformer.to(*args, **kwargs)
        if isinstance(self.tokenizer, torch.nn.Module):
            self.tokenizer.to(*args, **kwargs)
        return self

    def make_sampler(self, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                     guidance_schedule: str | None = None, temperature: float | None = None,
                     head_steps: int | None = None, progress: bool = False):
        from mgen.samplers.mar import MARSampler

        d = self.defaults
        steps = d["num_steps"] if num_inference_steps is None else num_inference_steps
        if int(steps) != steps or not 1 <= int(steps) <= MAX_STEPS:
            raise UserError(f"steps must be an integer in 1..{MAX_STEPS}, got {steps}")
        return MARSampler(num_steps=int(steps), cfg=d["cfg"] if guidance_scale is None else float(guidance_scale),
                          cfg_schedule=guidance_schedule or d["cfg_schedule"],
                          temperature=d["temperature"] if temperature is None else float(temperature),
                          head_steps=int(head_steps or d["head_steps"]), progress=progress)

    @torch.no_grad()
    def __call__(self, class_labels: int | Sequence[int] | torch.Tensor | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, guidance_schedule: str | None = None, temperature: float | None = None,
                 generator: torch.Generator | None = None, output_type: str = "pil", return_dict: bool = True, *,
                 head_steps: int | None = None, batch_size: int | None = None, progress: bool = False,
                 profile: bool = False, recap: Any = None) -> ImagePipelineOutput | tuple:
        """Sample one image per class label (MAR §3.4 with CFG); ``output_type`` "pil", "np" (B, H, W, 3 in [0, 1])
        or "pt" (B, 3, H, W in [0, 1]). ``class_labels=None`` with ``batch_size`` samples unconditionally.
        ``recap``: context-feature reuse (:func:`mgen.samplers.recap.wrap`: None, True, or
        ``{"pre_full_steps", "cache_steps", "head_fast_ratio"}``)."""
        if output_type not in ("pil", "np", "pt", "latent"):
            raise UserError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if class_labels is None:
            labels = None
            if batch_size is None:
                raise UserError("give class_labels (or batch_size for unconditional samples)")
        else:
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
            if labels.numel() == 0:
                raise UserError("no class labels given")
            if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
                raise UserError(f"class labels must be in 0..{self.num_classes - 1}, got {labels.tolist()[:8]}")
        sampler = self.make_sampler(num_inference_steps, guidance_scale, guidance_schedule, temperature, head_steps, progress)
        if recap is not None:
            from mgen.samplers.recap import wrap

            sampler = wrap(sampler, recap)
        self.last_sampler = sampler
        latents = sampler.sample(self.transformer, labels, generator=generator, batch_size=batch_size, profile=profile)
        if output_type == "latent":
            images = latents
        else:
            tok_dev = next(iter(self.tokenizer.parameters()), latents).device if isinstance(self.tokenizer, torch.nn.Module) else latents.device
            images = self.tokenizer.decode(_unscale(self.tokenizer, latents.float()).to(tok_dev))
            images = ((images.float() + 1) / 2).clamp(0, 1)
            if output_type in ("np", "pil"):
                images = images.permute(0, 2, 3, 1).cpu().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "mar-digits", weights: str | os.PathLike | None = None,
                        tokenizer: str | os.PathLike | torch.nn.Module | None = None, config: str | None = None,
                        device: str | torch.device | None = None, **sampler_defaults: Any) -> "MARPipeline":
        """A saved pipeline folder, or a registry name (``mar-digits``, ``mar-b``) with its weights and tokenizer.

        ``weights``: the generator's file (official ``checkpoint-last.pth``, safetensors); ``tokenizer``:
        a tokenizer name/path/module (default: the config's). Missing files are all named in one error.
        """
        p = Path(os.fspath(model)).expanduser()
        if p.is_dir() and (p / "model_index.json").exists():
            return _load_folder(cls, p, weights, tokenizer, device, sampler_defaults)
        return load_mar_pipeline(os.fspath(model), weights=weights, tokenizer_weights=tokenizer, device=device,
                                 config=config, **sampler_defaults)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:  # type: ignore[override]
        """diffusers layout: model_index.json, transformer/ (config.json + safetensors), tokenizer/, scheduler/."""
        import json

        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        (Path(save_directory) / "mgen_sampler.json").write_text(json.dumps(self.defaults, indent=2) + "\n")


def _load_folder(cls: type, p: Path, weights: Any, tokenizer: Any, device: Any, sampler_defaults: dict[str, Any]) -> MARPipeline:
    import json

    from mgen.models.mar import MAR

    tr = MAR.from_pretrained(weights if weights is not None else p / "transformer")
    if tokenizer is None and not (p / "tokenizer").is_dir():
        raise WeightsError(f"{p}: the pipeline folder has no tokenizer/; pass --tokenizer-weights PATH")
    tok = load_tokenizer(tokenizer if tokenizer is not None else p / "tokenizer")
    sched = DDPMScheduler.from_pretrained(p / "scheduler") if (p / "scheduler").exists() else head_scheduler()
    pipe = cls(tokenizer=tok, transformer=tr, scheduler=sched)
    if (p / "mgen_sampler.json").exists():
        pipe.defaults.update(json.loads((p / "mgen_sampler.json").read_text()))
    pipe.defaults.update({k: v for k, v in sampler_defaults.items() if v is not None})
    return pipe.to(device) if device is not None else pipe


def load_mar_pipeline(model: str | os.PathLike = "mar-digits", weights: str | os.PathLike | None = None,
                      tokenizer_weights: str | os.PathLike | torch.nn.Module | None = None, device: Any = None,
                      config: str | None = None, **sampler_defaults: Any) -> MARPipeline:
    """The :data:`mgen.pipelines.PIPELINES` loader of the ``mar`` family (see :meth:`MARPipeline.from_pretrained`)."""
    from mgen import hub, registry
    from mgen.models.mar import MAR

    p = Path(os.fspath(model)).expanduser()
    if p.is_dir() and (p / "model_index.json").exists():
        return _load_folder(MARPipeline, p, weights, tokenizer_weights, device, sampler_defaults)
    if p.exists():  # a bare weights file: the config names the architecture (else read from the checkpoint)
        entry = registry.get(config) if config else None
        weights = weights or p
    else:
        entry = registry.get(str(model))
        if entry.family != "mar":
            raise UserError(f"{entry.name} is a {entry.family!r} model, not a MAR model")
    # resolve every file first, so one error names everything that is missing
    missing: list[str] = []
    gen_path = None
    try:
        gen_path = hub.resolve(entry.name if entry else p, weights).path
    except WeightsError as e:
        missing.append(str(e))
    tok_spec: Any = tokenizer_weights
    if tok_spec is None or not isinstance(tok_spec, torch.nn.Module):
        tok_name = entry.tokenizer if entry else None
        if tok_spec is None and tok_name is None:
            raise UserError(f"{model}: no tokenizer known; pass --tokenizer-weights PATH")
        if tok_name is not None:
            tok_entry = registry.get(tok_name)
            if tok_entry.family != "patch" or tok_spec is not None:
                try:
                    hub.resolve(tok_name, tok_spec, what="tokenizer-weights")
                except WeightsError as e:
                    missing.append(str(e).replace("--weights PATH", "--tokenizer-weights PATH"))
    if missing:
        raise WeightsError(f"{len(missing)} weights file{'s' if len(missing) > 1 else ''} missing: " + " | ".join(missing))
    tr = MAR.from_pretrained(gen_path, config=entry.name if entry else None)
    tok = load_tokenizer(entry.tokenizer if (entry and entry.tokenizer) else tok_spec,
                         weights=None if isinstance(tok_spec, torch.nn.Module) else tok_spec) if not isinstance(tok_spec, torch.nn.Module) else tok_spec
    pipe = MARPipeline(tokenizer=tok, transformer=tr, scheduler=head_scheduler())
    if entry is not None:
        pipe.defaults.update({k: v for k, v in entry.sampler.items() if k in pipe.defaults})
    pipe.defaults.update({k: v for k, v in sampler_defaults.items() if v is not None})
    return pipe.to(device) if device is not None else pipe


__all__ = ["MARPipeline", "load_mar_pipeline", "load_tokenizer", "head_scheduler", "np"]


def convert_official_checkpoint(src: str | os.PathLike, out: str | os.PathLike, config: str | None = None,
                                tokenizer: str | None = None, ema: bool = True) -> Path:
    """Official MAR ``checkpoint-last.pth`` → a MARPipeline folder (safetensors; EMA weights by default).

    ``config``: the MAR registry name (default: read from the checkpoint's ``args``); ``tokenizer``: the
    tokenizer's name or file (default: the config's, e.g. kl16, if its weights are found). Without a
    tokenizer the folder holds the transformer and scheduler only, and loading it needs ``--tokenizer-weights``.
    """
    import shutil
    import tempfile

    from mgen import hub, registry
    from mgen.models.mar import MAR

    tr = MAR.from_pretrained(src, config=config, ema=ema)
    entry = registry.get(config) if config else None
    tok = None
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer) if not Path(tokenizer).exists() or Path(tokenizer).is_dir() else \
            load_tokenizer((entry.tokenizer if entry else "kl16"), weights=tokenizer)
    elif entry is not None and entry.tokenizer and hub.find_weights(registry.get(entry.tokenizer)) is not None:
        tok = load_tokenizer(entry.tokenizer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-mar-", dir=out.parent))
    try:
        pipe = MARPipeline(tokenizer=tok, transformer=tr)
        if entry is not None:
            pipe.defaults.update({k: v for k, v in entry.sampler.items() if k in pipe.defaults})
        pipe.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
