"""What every mgen pipeline shares: loading through the resolver, saving through diffusers, the sampler settings
component, progress bars and step callbacks (docs/ARCHITECTURE.md, "Pipelines").

A pipeline holds three components: the generator (``model_component``, e.g. ``transformer``), the tokenizer
(``tokenizer_component``: ``tokenizer`` / ``vqvae`` / ``vae``) and ``scheduler`` — a
:class:`~mgen.samplers.settings.SamplerSettings` naming the sampler class and its settings. All three are diffusers
components, so ``save_pretrained`` writes them and ``from_pretrained(folder)`` restores them with diffusers' own
machinery (``model_index.json`` lists each as ``[module, class]``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from mgen.errors import UserError, WeightsError
from mgen.families import family_of_class
from mgen.pipelines.loading import diffusers_dtype_kwargs, load_pipeline, split_load_kwargs
from mgen.resolver import DIFFUSERS_DIT_FOLDER, PIPELINE_FOLDER, Spec, build_component
from mgen.samplers.settings import SamplerSettings
from mgen.tokenizers import load_tokenizer

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
StepCallback = Callable[[Any, int, Any, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]


def format_images(images: torch.Tensor, output_type: str) -> Any:
    """Images in [-1, 1] → diffusers' output formats: "pt" (B, 3, H, W) / "np" (B, H, W, 3) in [0, 1], or PIL."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    arr = x.cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    return DiffusionPipeline.numpy_to_pil(arr)


def check_output_type(output_type: str | None) -> str:
    output_type = output_type or "pil"
    if output_type not in OUTPUT_TYPES:
        raise UserError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
    return output_type


def as_labels(class_labels: Sequence[int] | torch.Tensor | int | None, num_classes: int,
              device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Class labels as a (B,) long tensor, checked against the model's class count."""
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


def _settings_component(scheduler: Any, default_sampler: str | None) -> SamplerSettings:
    """A SamplerSettings from what a caller gave: settings, a sampler object, or None / a foreign scheduler."""
    if isinstance(scheduler, SamplerSettings):
        return scheduler
    if scheduler is not None and hasattr(scheduler, "sample"):
        return SamplerSettings.of(scheduler)
    if default_sampler is None:
        raise UserError("no sampler settings given")
    return SamplerSettings.for_sampler(default_sampler)  # e.g. an older folder's diffusers scheduler


class MgenPipeline(DiffusionPipeline):
    """Base class of mgen's pipelines (a ``diffusers.DiffusionPipeline``)."""

    #: the registry name that ``from_pretrained()`` loads without an argument
    default_model: ClassVar[str | None] = None
    model_component: ClassVar[str] = "transformer"
    tokenizer_component: ClassVar[str] = "tokenizer"
    #: the sampler class used when a caller gives none (``"module:Class"``, from the families table)
    default_sampler: ClassVar[str | None] = None
    #: pipeline-style argument names → the sampler's field names
    sampler_aliases: ClassVar[dict[str, str]] = {}
    _callback_tensor_inputs: ClassVar[list[str]] = []
    _optional_components: ClassVar[list[str]] = ["scheduler"]  # has a default (the family sampler)

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None,
                        weights: str | os.PathLike | None = None,
                        tokenizer: str | os.PathLike | torch.nn.Module | None = None, config: str | None = None,
                        device: str | torch.device | None = None, **kwargs: Any) -> Any:
        """A registry name, a YAML config, a folder written by :meth:`save_pretrained` or an official file (with
        ``config``); ``weights`` / ``tokenizer`` replace the files a name would find; ``torch_dtype`` and
        diffusers' other loading options are honoured; other keyword arguments are sampler settings."""
        name = pretrained_model_name_or_path or cls.default_model
        if name is None:
            raise UserError(f"{cls.__name__}.from_pretrained: give a model name or folder")
        return load_pipeline(name, weights=weights, tokenizer_weights=tokenizer, device=device, config=config,
                             pipeline_cls=cls, **kwargs)

    @classmethod
    def from_spec(cls, spec: Spec, tokenizer: Any = None, **kwargs: Any) -> Any:
        """Build from a resolved spec (called by :func:`mgen.pipelines.load_pipeline`); missing weights of the
        generator and of its tokenizer are named together in one error."""
        load_kwargs, overrides = split_load_kwargs(kwargs)
        errors: list[str] = []
        if spec.layout == PIPELINE_FOLDER:
            kw = diffusers_dtype_kwargs(load_kwargs)
            kw.setdefault("use_safetensors", True)  # mgen reads weights as safetensors (pickles only via the allow-list)
            kw.update(local_files_only=True, trust_remote_code=False)  # never a download, never a folder's own code
            try:
                pipe = super().from_pretrained(os.fspath(spec.path), **kw)
            except OSError as e:  # a component folder without its weights / config (diffusers' fetch error)
                first = (str(e).splitlines() or [type(e).__name__])[0]
                raise WeightsError(f"{spec.path}: cannot load this pipeline folder ({first}); mgen reads component "
                                   "weights as safetensors only (convert pickled .bin files with `mgen convert`)") from None
            if not isinstance(pipe, cls):
                raise UserError(f"{spec.path}: a {type(pipe).__name__} folder, not a {cls.__name__} one")
            if tokenizer is not None:
                pipe.register_modules(**{cls.tokenizer_component: pipe._tokenizer_for(spec, tokenizer)})
        elif spec.layout == DIFFUSERS_DIT_FOLDER:
            pipe = cls.from_diffusers_folder(spec.path, **load_kwargs)
        else:
            model = None
            try:
                model = build_component(spec, **{k: v for k, v in load_kwargs.items() if k == "torch_dtype"})
            except WeightsError as e:  # the generator's weights first in the message
                errors.append(str(e))
            tok = None
            try:
                tok = cls._tokenizer_for(spec, tokenizer)
            except WeightsError as e:
                errors.append(str(e).replace("--weights PATH", "--tokenizer-weights PATH"))
            if errors:
                n = len(errors)
                raise WeightsError(errors[0] if n == 1 else f"{n} weights files missing: " + " | ".join(errors))
            dtype = load_kwargs.get("torch_dtype")
            if dtype is not None and isinstance(tok, torch.nn.Module):
                tok = tok.to(dtype)
            settings = SamplerSettings.for_sampler(spec.family.sampler or cls.default_sampler,
                                                   dict(spec.entry.sampler) if spec.entry else {})
            pipe = cls(**{cls.model_component: model.eval(), cls.tokenizer_component: tok, "scheduler": settings})
        if overrides:
            pipe.set_sampler(**overrides)
        return pipe

    @classmethod
    def from_diffusers_folder(cls, folder: Any, **kwargs: Any) -> Any:
        raise UserError(f"{folder}: {cls.__name__} cannot read this diffusers pipeline folder")

    @classmethod
    def _tokenizer_for(cls, spec: Spec, tokenizer: Any) -> Any:
        """The tokenizer module for ``spec``: given as a module, a path, or named by the config (``tokenizer:``)."""
        accepted = spec.family.tokenizers
        if isinstance(tokenizer, torch.nn.Module):
            tok = tokenizer
        else:
            name = spec.entry.tokenizer if spec.entry is not None else None
            if name is None and tokenizer is None:
                raise UserError(f"{spec.path or spec.family.name}: no tokenizer known; pass --tokenizer-weights PATH "
                                f"(a {' or '.join(accepted)} tokenizer)")
            tok = load_tokenizer(name, weights=tokenizer) if name is not None else load_tokenizer(tokenizer)
        fam = family_of_class(type(tok).__name__)
        if fam is not None and accepted and fam.name not in accepted:
            raise UserError(f"a {fam.name!r} tokenizer cannot serve a {spec.family.name!r} model "
                            f"(it takes {' or '.join(accepted)})")
        return tok.eval() if isinstance(tok, torch.nn.Module) else tok

    def _init_components(self, model: Any, tokenizer: Any, scheduler: Any) -> None:
        self.register_modules(**{self.model_component: model, self.tokenizer_component: tokenizer,
                                 "scheduler": _settings_component(scheduler, self.default_sampler)})

    # -- the sampler ----------------------------------------------------------------------------------------------
    def _sampler_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        allowed = set(self.scheduler.allowed())
        out: dict[str, Any] = {}
        for k, v in overrides.items():
            if v is None:
                continue
            target = self.sampler_aliases.get(k, k) if k not in allowed else k
            out[target] = v
        return out

    def set_sampler(self, **overrides: Any) -> None:
        """Change the saved sampler settings (``num_inference_steps`` / ``guidance_scale`` aliases accepted)."""
        self.register_modules(scheduler=self.scheduler.replace(**self._sampler_overrides(overrides)))

    @property
    def sampler(self) -> Any:
        """The configured sampler object (built from the ``scheduler`` settings)."""
        return self.scheduler.build()

    def make_sampler(self, explicit: dict[str, Any] | None = None, **overrides: Any) -> Any:
        """The sampler with the non-``None`` ``overrides`` (pipeline-style names allowed) and then the ``explicit``
        settings (taken as given, ``None`` included) applied, validated."""
        return self.scheduler.build(explicit or None, **self._sampler_overrides(overrides))

    # -- running ----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step_callback(self, sampler: Any, callback_on_step_end: StepCallback | None = None,
                      callback_on_step_end_tensor_inputs: Sequence[str] | None = None) -> Iterator[Callable[..., Any]]:
        """A sampler callback that advances ``self.progress_bar`` and calls diffusers-style ``callback_on_step_end``."""
        inputs = list(callback_on_step_end_tensor_inputs or self._callback_tensor_inputs)
        bad = [k for k in inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise UserError(f"callback_on_step_end_tensor_inputs {bad} are not among {self._callback_tensor_inputs}")
        with self.progress_bar(total=int(sampler.total_steps)) as bar:
            def callback(step: int, timestep: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
                bar.update()
                if callback_on_step_end is None:
                    return None
                out = callback_on_step_end(self, step, timestep, {k: state[k] for k in inputs if k in state})
                return dict(out) if out else None
            yield callback

    @property
    def num_classes(self) -> int:
        model = getattr(self, self.model_component)
        for attr in ("num_classes", "class_num"):
            n = getattr(type(model), attr, None)
            if n is not None and not isinstance(n, property):
                return int(n)
            if isinstance(n, property):
                return int(getattr(model, attr))
        config = getattr(model, "config", {})
        for key in ("num_classes", "class_num"):
            if key in config:
                return int(config[key])
        raise AttributeError(f"{type(model).__name__} has no class count")


__all__ = ["MgenPipeline", "ImagePipelineOutput", "format_images", "as_labels", "check_output_type", "OUTPUT_TYPES"]
