"""Text generation with masked diffusion LMs: :class:`DLMPipeline`, a ``diffusers.DiffusionPipeline``.

Components: ``model`` (:class:`mgen.models.dlm.MaskedDiffusionLM`, or an adapter of a transformers checkpoint),
``tokenizer`` (:class:`mgen.models.dlm_data.TextTokenizer`, a ``transformers.PreTrainedTokenizerFast``, or the
checkpoint's own tokenizer), ``scheduler`` (:class:`mgen.samplers.settings.SamplerSettings`: which sampler runs,
and its settings) and the optional ``joint_sampler`` (:class:`mgen.models.joint_sampler.JointSamplerLayer`).
``save_pretrained(folder)`` writes every component with diffusers' machinery and ``from_pretrained(folder)``
restores the pipeline, so the same seed gives the same text (docs/ARCHITECTURE.md, "Pipelines"). An adapter
with a ``diffusers_component`` (DiffusionGemma, :data:`COMPONENT_ADAPTERS`) is saved as that transformers model
(``["transformers", "DiffusionGemmaForBlockDiffusion"]`` in ``model_index.json``) and wrapped again on loading;
other adapters of transformers checkpoints are not saved (their folder is the saved form).

Argument names follow diffusers' ``LLaDA2Pipeline`` (diffusers 0.42.1, with ``BlockRefinementScheduler``) where
they mean the same thing (``prompt``, ``input_ids``, ``gen_length``, ``block_length``, ``num_inference_steps``,
``temperature``, ``top_p``, ``top_k``, ``eos_early_stop``, ``generator``, ``output_type``, ``return_dict``,
``callback_on_step_end`` / ``callback_on_step_end_tensor_inputs``; output ``sequences`` / ``texts``). Where we
differ (checked against diffusers 0.42.1):

- ``num_inference_steps``: theirs is *per block* (``BlockRefinementScheduler.get_num_transfer_tokens(block_length,
  steps)``); ours is the *total*, split evenly over the blocks (LLaDA generate.py's ``steps``), default 32 both.
- ``gen_length``: default 128 here (or the model's config ``sampler:`` settings), 2048 there. ``block_length``:
  ours defaults to ``gen_length`` (one block, as generate.py); theirs to the scheduler's 32, and their blocks are
  aligned to absolute positions (the prompt fills the first blocks); ours start right after the prompt.
- ``eos_early_stop``: default False here (generate.py decodes every position), True there.
- Decoding rule: theirs commits every token above a confidence ``threshold`` (0.7; ``editing_threshold``,
  ``max_post_steps``, ``minimal_topk``, ``sampling_method``) — LLaDA2's refinement; ours follows LLaDA's
  generate.py / Dream's generation_utils.py exactly, chosen with ``sampler`` (a name of :data:`SAMPLERS`:
  ``llada`` | ``dream`` | ``exact`` | ``joint``, or a ``"module:Class"``), plus ``remasking``, ``cfg_scale``,
  ``alg``, ``alg_temp``, ``tokens_per_step``. No chat template (``use_chat_template`` / ``messages``): these are
  base models. ``eos_token_id`` / ``mask_token_id`` come from the model; ``stream(step, texts)`` also receives
  the partly decoded texts after every step.

The ``mgen sample`` text options live in :mod:`mgen.commands.sample_text` (CLI code stays out of the library).
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from mgen import hub, registry
from mgen.errors import UserError, WeightsError
from mgen.models.diffusion_gemma import DiffusionGemmaLM
from mgen.models.dlm import MaskedDiffusionLM, read_metadata, tokenizer_path
from mgen.models.dlm_adapters import load_hf_dlm
from mgen.models.dlm_data import TextTokenizer
from mgen.models.joint_sampler import JointSamplerLayer
from mgen.resolver import pipeline_index
from mgen.samplers.settings import SamplerSettings

#: sampler names of the ``sampler=`` argument (and ``--sampler``) → ``"module:Class"``
SAMPLERS: dict[str, str] = {
    "llada": "mgen.samplers.dlm:LLaDASampler",
    "dream": "mgen.samplers.dlm:DreamSampler",
    "exact": "mgen.samplers.dlm:ExactSampler",
    "joint": "mgen.samplers.joint:JointSampler",
    "eb": "mgen.samplers.entropy_bound:EntropyBoundSampler",
    "diffusion_gemma": "mgen.samplers.diffusion_gemma:DiffusionGemmaSampler",
    "llada2": "mgen.samplers.llada2:LLaDA2Sampler",
}
#: settings a pipeline starts from when no config gives any (LLaDA2Pipeline-like lengths)
DEFAULT_SETTINGS: dict[str, Any] = {"gen_length": 128, "steps": 32}
#: call arguments every text pipeline takes (LLaDA2Pipeline's); dropped for a sampler without such a setting (the
#: exact / joint samplers' step count follows from gen_length, Dream has no blocks), refused for none else
SHARED_SETTINGS = frozenset({"steps", "block_length"})
#: ``__call__`` argument names → sampler field names
CALL_ALIASES: dict[str, str] = {"num_inference_steps": "steps"}
#: keyword arguments of diffusers' loaders; accepted everywhere, used where they mean something
LOAD_KWARGS = ("low_cpu_mem_usage", "device_map", "variant", "use_safetensors", "cache_dir", "local_files_only",
               "revision", "max_memory", "offload_folder", "offload_state_dict", "provider", "sess_options",
               "use_flashpack", "force_download", "proxies", "token", "custom_pipeline", "custom_revision",
               "dduf_file", "load_connected_pipeline", "return_cached_folder", "quantization_config",
               "output_loading_info")

#: adapters whose pipeline component is the transformers model they wrap (``diffusers_component``): diffusers
#: saves and loads that model with transformers' rule, and the pipeline wraps it again (``adapts``)
COMPONENT_ADAPTERS: tuple[type, ...] = (DiffusionGemmaLM,)


def adapted(model: Any) -> Any:
    """``model`` in the adapter that drives it (a bare transformers model a pipeline folder loaded), else as is."""
    adapter = next((a for a in COMPONENT_ADAPTERS if a.adapts(model)), None)
    return model if adapter is None else adapter(model)


def saved_component(module: Any) -> Any:
    """The module diffusers saves for a component: an adapter's ``diffusers_component``, else the module."""
    return getattr(module, "diffusers_component", module)


def _library_tuple(module: Any) -> tuple[str, str] | None:
    """``model_index.json``'s ``[library, class]`` for a transformers module, or None (diffusers' own rule).

    diffusers 0.42.1's ``_fetch_class_library_tuple`` takes a module path's second-to-last part for one of its
    pipeline folders when a folder of that name exists (``transformers.models.diffusion_gemma.modeling_…`` →
    ``"diffusion_gemma"``, which diffusers then cannot load from); a transformers class is always listed as
    ``"transformers"``, as diffusers' loader reads it."""
    cls = type(module)
    if cls.__module__.split(".")[0] == "transformers":
        return ("transformers", cls.__name__)
    return None


def sampler_target(sampler: str) -> str:
    """A sampler name (``llada``, …) or ``"module:Class"`` → ``"module:Class"``."""
    if ":" in sampler:
        return sampler
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler]


def sampler_name(target: str) -> str:
    """``"module:Class"`` → its name in :data:`SAMPLERS` (or the target itself)."""
    return next((k for k, v in SAMPLERS.items() if v == target), target)


def settings_for(sampler: str, *settings: dict[str, Any] | None, **explicit: Any) -> SamplerSettings:
    """Settings for ``sampler`` from config mappings (later ones win; keys of other samplers ignored) and
    ``explicit`` values (non-None; a key the sampler does not take is a UserError)."""
    target = sampler_target(sampler)
    allowed = set(SamplerSettings(sampler=target).allowed())
    values: dict[str, Any] = {}
    for mapping in settings:
        values.update({k: v for k, v in dict(mapping or {}).items() if k in allowed and v is not None})
    explicit = {k: v for k, v in explicit.items() if v is not None}
    bad = sorted(set(explicit) - allowed)
    if bad:
        raise UserError(f"{', '.join(bad)} does not apply to the {sampler_name(target)} sampler "
                        f"(its settings: {', '.join(sorted(allowed))})")
    out = SamplerSettings(sampler=target, settings={**values, **explicit})
    out.build()  # validated by the sampler itself
    return out


def _fit(saved: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """The saved settings adapted to an explicit ``gen_length``: saved ``steps`` above it are clamped, a saved
    ``block_length`` that does not divide it is dropped (one block)."""
    base = dict(saved)
    gen = explicit.get("gen_length")
    if isinstance(gen, int) and gen > 0:
        if "steps" not in explicit and isinstance(base.get("steps"), int) and base["steps"] > gen:
            base["steps"] = gen
        if "block_length" not in explicit and isinstance(base.get("block_length"), int) and gen % base["block_length"]:
            base.pop("block_length")
    return base


# -- loading ---------------------------------------------------------------------------------------------------------
def load_text_model(model: str, weights: str | None = None, trust_remote_code: bool = False,
                    device: str | torch.device | None = "cpu", torch_dtype: torch.dtype | None = None
                    ) -> tuple[torch.nn.Module, Any]:
    """(generator, tokenizer) for a registry name (family dlm), our safetensors file, a saved model folder or a
    transformers folder (``trust_remote_code`` for LLaDA / Dream)."""
    p = Path(str(model)).expanduser()
    if weights is None and p.is_dir() and not (p / "model_index.json").exists():
        if _is_mgen_model_folder(p):
            net = MaskedDiffusionLM.from_pretrained(p, torch_dtype=torch_dtype)
            return _placed(net, device), _tokenizer_near(p, net)
        return load_hf_dlm(p, trust_remote_code=trust_remote_code, dtype=torch_dtype, device=device or "cpu")
    res = hub.resolve(model, weights)
    if res.entry is not None and "base" in res.entry.arch:
        raise UserError(f"{res.entry.name} is a joint sampler layer; pass it as --joint-sampler with its base model")
    if res.path.is_dir():
        return load_hf_dlm(res.path, trust_remote_code=trust_remote_code, dtype=torch_dtype, device=device or "cpu")
    if res.entry is not None:
        arch = res.entry.arch
    else:
        meta = read_metadata(str(res.path))
        if "mgen_arch" not in meta:
            raise WeightsError(f"{res.path}: not an mgen dlm file (no arch metadata); pass --model NAME --weights FILE")
        arch = json.loads(meta["mgen_arch"])
    net = MaskedDiffusionLM.from_pretrained(str(res.path), config=arch, torch_dtype=torch_dtype)
    return _placed(net, device), _tokenizer_near(res.path.parent, net)


def _check_component_folders(folder: Path, given: dict[str, Any]) -> None:
    """One :class:`UserError` line for a pipeline folder whose ``model_index.json`` lists a component that has no
    sub-folder (and that the caller does not pass)."""
    index = pipeline_index(folder)
    missing = [name for name, value in index.items()
               if not name.startswith("_") and isinstance(value, (list, tuple)) and value and value[0] is not None
               and name not in given and not (folder / name).is_dir()]
    if missing:
        hint = " (or pass DLMPipeline.from_pretrained(..., tokenizer=…))" if "tokenizer" in missing else ""
        raise UserError(f"{folder}: pipeline folder without its {', '.join(missing)} folder "
                        f"(model_index.json lists it){hint}; save the pipeline again")


def _placed(module: torch.nn.Module, device: Any) -> torch.nn.Module:
    return module if device is None else module.to(device)


def _is_mgen_model_folder(p: Path) -> bool:
    try:
        return json.loads((p / "config.json").read_text()).get("_class_name") == MaskedDiffusionLM.__name__
    except (OSError, ValueError, AttributeError):
        return False


def _tokenizer_near(folder: Path, net: MaskedDiffusionLM) -> TextTokenizer:
    """The model's tokenizer: its ``tokenizer_file`` beside the weights, else in the package (``mgen/weights``)."""
    tok_file = net.cfg.tokenizer_file
    local = folder / tok_file if tok_file else None
    tok = TextTokenizer.from_file(local if local is not None and local.exists() else tokenizer_path(tok_file))
    if tok.mask_id != net.mask_id:
        raise WeightsError(f"tokenizer mask id {tok.mask_id} does not match the model's {net.mask_id}")
    return tok


def load_tokenizer_file(path: str | os.PathLike) -> TextTokenizer:
    """A ``tokenizers`` JSON file or a saved tokenizer folder as a :class:`TextTokenizer`."""
    p = Path(path).expanduser()
    if p.is_dir():
        return TextTokenizer.from_pretrained(os.fspath(p))
    if not p.exists():
        raise WeightsError(f"{p}: no such tokenizer file or folder")
    return TextTokenizer.from_file(p)


def is_text_model_path(p: Path) -> bool:
    """A transformers model folder (config.json with a ``model_type``, not a diffusers component), a saved
    MaskedDiffusionLM folder, or an mgen dlm safetensors file (``mgen_family: dlm`` in its metadata)."""
    p = Path(p)
    if p.is_dir():
        try:
            cfg = json.loads((p / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(cfg, dict) and (("model_type" in cfg and "_class_name" not in cfg)
                                          or cfg.get("_class_name") == MaskedDiffusionLM.__name__)
    if p.suffix == ".safetensors":
        try:
            return read_metadata(str(p)).get("mgen_family") == "dlm"
        except WeightsError:
            return False
    return False


def load_joint_layer(name_or_path: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> JointSamplerLayer:
    """A joint sampler layer by registry name, our safetensors file or a saved folder."""
    return JointSamplerLayer.from_pretrained(name_or_path, torch_dtype=torch_dtype)


# -- pipeline --------------------------------------------------------------------------------------------------------
@dataclass
class DLMPipelineOutput(BaseOutput):
    sequences: torch.LongTensor
    texts: list[str] | None = None


def _encode(tokenizer: Any, text: str) -> list[int]:
    if isinstance(tokenizer, TextTokenizer) or hasattr(tokenizer, "mask_id"):
        return list(tokenizer.encode(text))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # a plain transformers tokenizer


def _warn_other_length(sampler: Any, layer: Any) -> None:
    """An ADJUST layer does not transfer across generation lengths (README, "A layer is trained for one generation
    length"): warn when the call's ``gen_length`` differs from the length the layer was trained on."""
    trained, asked = getattr(layer, "trained_gen_length", None), getattr(sampler, "gen_length", None)
    if trained and asked and int(asked) != int(trained):
        warnings.warn(f"the joint sampler layer was trained on {trained}-token generations; with gen_length {asked} "
                      f"it samples far from its measured quality (pass gen_length={trained})", UserWarning,
                      stacklevel=5)


class DLMPipeline(DiffusionPipeline):
    """Prompt text → generated text with a masked diffusion LM (ours or an adapter) and a DLM sampler."""

    model_cpu_offload_seq = "model->joint_sampler"
    _optional_components: ClassVar[list[str]] = ["joint_sampler", "scheduler"]
    _callback_tensor_inputs: ClassVar[list[str]] = ["x"]

    def __init__(self, model: MaskedDiffusionLM | torch.nn.Module, tokenizer: Any,
                 joint_sampler: JointSamplerLayer | torch.nn.Module | None = None,
                 scheduler: SamplerSettings | None = None) -> None:
        # (the exact classes in the annotations: diffusers' from_pipe hands over a ModelMixin component only when
        # its type is named there)
        super().__init__()
        model = adapted(model)
        if scheduler is None:
            k = getattr(joint_sampler, "config", {}).get("tokens_per_step") if joint_sampler is not None else None
            scheduler = settings_for("joint", DEFAULT_SETTINGS, {"tokens_per_step": k}) if joint_sampler is not None \
                else settings_for(getattr(model, "default_sampler", "llada"), DEFAULT_SETTINGS)
        elif not isinstance(scheduler, SamplerSettings):
            scheduler = SamplerSettings.of(scheduler)  # a sampler object
        self.register_modules(model=model, tokenizer=tokenizer, joint_sampler=joint_sampler, scheduler=scheduler)
        self.last_stats = None

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None,
                        joint_sampler: str | os.PathLike | torch.nn.Module | None = None,
                        trust_remote_code: bool = False, device: str | torch.device | None = None,
                        torch_dtype: torch.dtype | None = None, tokenizer: Any = None,
                        dtype: torch.dtype | None = None, **sampler_settings: Any) -> "DLMPipeline":
        """A saved pipeline folder (diffusers' ``model_index.json``), a registry name (``dlm-text``; ``joint-dlm-text``
        gives its base model with the layer), our safetensors file, a saved model folder or a transformers folder
        (HF masked LMs; LLaDA / Dream with ``trust_remote_code=True``).

        ``weights`` replaces the weights a name finds; ``joint_sampler`` adds an ADJUST layer (name, file, folder
        or module); ``tokenizer`` replaces the tokenizer (a file, folder or object); ``torch_dtype`` is honoured on
        every path; diffusers' other loading options are accepted; the remaining keyword arguments are sampler
        settings (``sampler="dream"``, ``steps=…``, ``gen_length=…``, …) saved into the ``scheduler`` component.
        """
        load_kwargs = {k: sampler_settings.pop(k) for k in LOAD_KWARGS if k in sampler_settings}
        torch_dtype = dtype if dtype is not None else torch_dtype  # diffusers 0.42 calls it dtype
        name = os.fspath(pretrained_model_name_or_path)
        p = Path(name).expanduser()
        layer = joint_sampler
        if layer is not None and not isinstance(layer, torch.nn.Module):
            layer = load_joint_layer(layer, torch_dtype)
        tok = load_tokenizer_file(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        if weights is None and p.is_dir() and (p / "model_index.json").exists():
            extra = {k: v for k, v in (("joint_sampler", layer), ("tokenizer", tok)) if v is not None}
            _check_component_folders(p, given=extra)
            pipe = super().from_pretrained(os.fspath(p), dtype=torch_dtype, **load_kwargs, **extra)
            if not isinstance(pipe, cls):
                raise UserError(f"{p}: a {type(pipe).__name__} folder, not a {cls.__name__} one")
        else:
            entry = None
            if p.suffix in (".yaml", ".yml") and p.is_file():
                entry, name = registry.load_config_file(p), None
            elif not (p.exists() or os.sep in name or p.suffix in (".safetensors", ".json")):
                entry = registry.get(name)
            pipe = cls._build(name, entry, weights, layer, tok, trust_remote_code, torch_dtype)
        if pipe.joint_sampler is not None:
            pipe.joint_sampler.check_base(pipe.model)
            if torch_dtype is not None:
                pipe.joint_sampler.to(torch_dtype)
        if sampler_settings:
            pipe.set_sampler(**sampler_settings)
        if device is not None:
            pipe.to(device)
        return pipe

    @classmethod
    def _build(cls, name: str | None, entry: Any, weights: Any, layer: torch.nn.Module | None, tok: Any,
               trust_remote_code: bool, torch_dtype: torch.dtype | None) -> "DLMPipeline":
        """From a registry / YAML entry (``name`` None for a YAML file) or a path (``entry`` None)."""
        if entry is not None and "base" in entry.arch:  # a joint sampler layer: its base model + the layer
            if layer is None:
                if weights is None and name is None:
                    weights = hub.find_weights(entry)
                if weights is None and name is None:
                    raise WeightsError(f"{entry.name}: weights not found; {hub.how_to_get(entry)}")
                layer = JointSamplerLayer.from_pretrained(weights or name, config=dict(entry.arch),
                                                          torch_dtype=torch_dtype)
            base = str(entry.arch["base"])
            net, found_tok = load_text_model(base, None, trust_remote_code, None, torch_dtype)
            config_settings = dict(registry.get(base).sampler)
        else:
            if name is None:  # a YAML entry: its weights as found by the registry rules
                weights = weights or hub.find_weights(entry)
                if weights is None:
                    raise WeightsError(f"{entry.name}: weights not found; {hub.how_to_get(entry)}")
                net = MaskedDiffusionLM.from_pretrained(os.fspath(weights), config=dict(entry.arch),
                                                        torch_dtype=torch_dtype)
                found_tok = _tokenizer_near(Path(os.fspath(weights)).parent, net)
            else:
                net, found_tok = load_text_model(name, weights, trust_remote_code, None, torch_dtype)
            config_settings = dict(entry.sampler) if entry is not None else {}
        if layer is not None:
            layer.check_base(net)
            settings = settings_for("joint", DEFAULT_SETTINGS, config_settings,
                                    {"tokens_per_step": layer.config.get("tokens_per_step")})
        else:
            settings = settings_for(getattr(net, "default_sampler", "llada"), DEFAULT_SETTINGS, config_settings)
        return cls(net, tok if tok is not None else found_tok, joint_sampler=layer, scheduler=settings)

    @classmethod
    def from_spec(cls, spec: Any, tokenizer: Any = None, **kwargs: Any) -> "DLMPipeline":
        """Build from a :class:`mgen.resolver.Spec` (called by :func:`mgen.pipelines.load_pipeline`)."""
        if spec.missing:
            raise WeightsError(spec.missing)
        if spec.entry is not None and spec.layout in ("name", "yaml"):
            for k in LOAD_KWARGS:  # diffusers' loading options: nothing to do for these layouts
                kwargs.pop(k, None)
            torch_dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
            kwargs.pop("torch_dtype", None)
            tok = load_tokenizer_file(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
            name = spec.entry.name if spec.layout == "name" else None
            pipe = cls._build(name, spec.entry, spec.path, None, tok, kwargs.pop("trust_remote_code", False),
                              torch_dtype)
            if kwargs:
                pipe.set_sampler(**kwargs)
            return pipe
        return cls.from_pretrained(spec.path, tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_name(cls, model: str, weights: str | None = None, joint_sampler: str | None = None,
                  trust_remote_code: bool = False, device: str | torch.device | None = "cpu",
                  **kwargs: Any) -> "DLMPipeline":
        """Alias of :meth:`from_pretrained` (the older name)."""
        return cls.from_pretrained(model, weights=weights, joint_sampler=joint_sampler,
                                   trust_remote_code=trust_remote_code, device=device, **kwargs)

    def register_modules(self, **kwargs: Any) -> None:
        """diffusers' ``register_modules``; an adapter is listed as the module it saves (``diffusers_component``),
        and a transformers class as ``["transformers", class]``."""
        super().register_modules(**kwargs)
        for name, module in kwargs.items():
            if module is None:
                continue
            entry = _library_tuple(saved_component(module))
            if entry is not None:
                self.register_to_config(**{name: entry})

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained`` (every component in its sub-folder; an adapted transformers model as that
        model's own folder); refused, in one line, for a model diffusers cannot save (another adapter of a
        transformers checkpoint: load its folder again instead)."""
        component = saved_component(self.model)  # an adapter with a diffusers_component names a saveable one
        if component is self.model and not isinstance(component, ModelMixin):
            raise UserError(f"this pipeline's model ({type(self.model).__name__}) is a transformers checkpoint "
                            "behind an adapter; it is not saved as a pipeline folder; load its folder again")
        if component is self.model:
            super().save_pretrained(save_directory, *args, **kwargs)
            return
        adapter = self.model
        self.register_modules(model=component)  # diffusers saves what is registered
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.register_modules(model=adapter)

    # -- the sampler --------------------------------------------------------------------------------------------
    @property
    def sampler(self) -> Any:
        """The configured sampler object (built from the ``scheduler`` settings)."""
        return self.scheduler.build()

    def set_sampler(self, sampler: str | None = None, **settings: Any) -> None:
        """Change the saved sampler (a :data:`SAMPLERS` name or ``"module:Class"``) and/or its settings."""
        target = sampler_target(sampler) if sampler else self.scheduler.config.sampler
        settings = {CALL_ALIASES.get(k, k): v for k, v in settings.items() if v is not None}
        self.register_modules(scheduler=settings_for(target, _fit(self.scheduler.settings, settings), **settings))

    def make_sampler(self, sampler: str | None = None, **overrides: Any) -> Any:
        """The sampler object for one call: the saved settings with the non-None ``overrides`` applied."""
        return self._configure(sampler, overrides)[0]

    def _configure(self, sampler: str | None, overrides: dict[str, Any]) -> tuple[Any, str]:
        overrides = {CALL_ALIASES.get(k, k): v for k, v in overrides.items() if v is not None}
        saved = self.scheduler.config.sampler
        if sampler is None:
            if "tokens_per_step" in overrides or (self.joint_sampler is not None and
                                                  saved != SAMPLERS["joint"] and "alg" not in overrides):
                sampler = "joint"
            elif "alg" in overrides and saved != SAMPLERS["dream"]:
                sampler = "dream"
        target = sampler_target(sampler) if sampler else saved
        base = dict(self.scheduler.settings)
        if target != saved:  # another sampler: the saved settings it shares, plus its own pipeline defaults
            base = {**DEFAULT_SETTINGS, **base}
            if target == SAMPLERS["dream"]:
                base.setdefault("alg", "entropy")
            if target == SAMPLERS["joint"] and self.joint_sampler is not None:
                base.setdefault("tokens_per_step", self.joint_sampler.config.get("tokens_per_step", 4))
        allowed = set(SamplerSettings(sampler=target).allowed())
        overrides = {k: v for k, v in overrides.items() if k in allowed or k not in SHARED_SETTINGS}
        built = settings_for(target, _fit(base, overrides), **overrides).build()
        if target == SAMPLERS["joint"] and self.joint_sampler is not None:
            _warn_other_length(built, self.joint_sampler)
        return built, target

    # -- running ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, input_ids: torch.LongTensor | list[list[int]] | None = None,
                 gen_length: int | None = None, block_length: int | None = None,
                 num_inference_steps: int | None = None, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, sampler: str | None = None, remasking: str | None = None,
                 alg: str | None = None, alg_temp: float | None = None, cfg_scale: float | None = None,
                 tokens_per_step: int | None = None, eos_early_stop: bool = False, eos: str | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "text",
                 return_dict: bool = True,
                 callback_on_step_end: Callable[..., dict[str, torch.Tensor] | None] | PipelineCallback
                 | MultiPipelineCallbacks | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("x",),
                 stream: Callable[[int, list[str]], None] | None = None,
                 **sampler_kwargs: Any) -> DLMPipelineOutput | tuple:
        """Generate. Unset arguments come from the ``scheduler`` settings (the model's config ``sampler:``),
        then from the sampler's defaults; ``sampler_kwargs`` are further settings of the chosen sampler.
        ``num_inference_steps`` / ``block_length`` are ignored by samplers without them (exact and joint: one
        forward per 1 / ``tokens_per_step`` tokens; Dream: no blocks); any other setting the chosen sampler does
        not take is a :class:`UserError`.

        ``callback_on_step_end(pipe, step, timestep, {"x": ids})`` runs after every decoding step (0-based) and may
        return ``{"x": ids}`` to replace the sequence; ``stream(step, texts)`` receives the partly decoded texts.
        ``output_type``: ``"text"`` (texts and ids) or ``"ids"`` (ids only). Returns :class:`DLMPipelineOutput`
        (``sequences``: left-padded prompts then the generated ids) or ``(sequences, texts)``.
        """
        if output_type not in ("text", "ids"):
            raise UserError(f"output_type must be 'text' or 'ids' (got {output_type!r})")
        if input_ids is None:
            if prompt is None:
                raise UserError("give a prompt (or input_ids)")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if any(not p for p in prompts):
                raise UserError("empty prompt: give some text to continue")
            input_ids = [_encode(self.tokenizer, p) for p in prompts]
        if tokens_per_step is not None and (not isinstance(tokens_per_step, int) or tokens_per_step < 1):
            raise UserError(f"tokens_per_step must be a positive integer (got {tokens_per_step!r})")
        eos_mode = eos or ("stop" if eos_early_stop else None)
        smp, target = self._configure(sampler, dict(
            gen_length=gen_length, block_length=block_length, num_inference_steps=num_inference_steps,
            temperature=temperature, top_p=top_p, top_k=top_k, remasking=remasking, alg=alg, alg_temp=alg_temp,
            cfg_scale=cfg_scale, tokens_per_step=tokens_per_step, eos=eos_mode, **sampler_kwargs))
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        inputs = list(callback_on_step_end_tensor_inputs)
        bad = [k for k in inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise UserError(f"callback_on_step_end_tensor_inputs {bad} are not among {self._callback_tensor_inputs}")
        p_len = input_ids.shape[-1] if isinstance(input_ids, torch.Tensor) else max(len(r) for r in input_ids)
        kwargs: dict[str, Any] = {"generator": generator}
        if "layer" in inspect.signature(smp.sample).parameters:
            kwargs["layer"] = self.joint_sampler
        with self.progress_bar(total=int(getattr(smp, "total_steps", 0) or 0)) as bar:
            def on_step(step: int, timestep: float, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
                out = None
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, step, timestep, {k: state[k] for k in inputs if k in state})
                    out = dict(out) if out else None
                if stream is not None:
                    x = (out or {}).get("x", state["x"])
                    stream(step, [self.decode(r[p_len:]) for r in x])
                bar.update()
                return out

            seqs = smp.sample(self.model, input_ids, callback=on_step, **kwargs)
        self.last_stats = getattr(smp, "stats", None)
        gen = getattr(smp, "gen_length", None) or seqs.shape[1] - p_len
        start = seqs.shape[1] - gen
        texts = [self.decode(r[start:]) for r in seqs] if output_type == "text" else None
        if not return_dict:
            return (seqs, texts)
        return DLMPipelineOutput(sequences=seqs, texts=texts)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Text of generated ids: the model's mask / EOS / pad ids and the tokenizer's special tokens dropped."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        drop = {getattr(self.model, k, None) for k in ("mask_id", "eos_id", "pad_id")}
        ids = [i for i in ids if i not in drop]
        return self.tokenizer.decode(ids, skip_special_tokens=True)
