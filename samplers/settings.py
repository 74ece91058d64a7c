"""A pipeline's sampler settings as a diffusers component (saved as ``scheduler_config.json``).

Samplers are plain objects (``mgen.samplers``); a pipeline keeps *which* sampler it runs and with which
settings as a :class:`SamplerSettings` component, so ``DiffusionPipeline.save_pretrained`` writes it into its own
sub-folder and ``SamplerSettings.from_pretrained(folder/<name>)`` (diffusers' component rule) restores it: no
extra JSON beside ``model_index.json`` (docs/ARCHITECTURE.md, "Pipelines").
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Mapping

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from mgen.errors import UserError
from mgen.families import import_target


def _fields(cls: type) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init]
    params = inspect.signature(cls.__init__).parameters
    return [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_value(key: str, value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"sampler setting {key}={value} is not a finite number")
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_value(key, v)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_value(f"{key}.{k}", v)
        return
    raise UserError(f"sampler setting {key}={value!r}: only numbers, strings, booleans and lists can be saved")


class SamplerSettings(SchedulerMixin, ConfigMixin):
    """Which sampler a pipeline runs (``"module:Class"``) and its settings; :meth:`build` makes the sampler."""

    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, sampler: str = "", settings: dict[str, Any] | None = None) -> None:
        settings = dict(settings or {})
        for k, v in settings.items():
            _check_value(k, v)

    @property
    def sampler_class(self) -> type:
        if not self.config.sampler:
            raise UserError("these sampler settings name no sampler class")
        return import_target(self.config.sampler)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.config.settings or {})

    def allowed(self) -> list[str]:
        """The sampler's setting names."""
        return [n for n in _fields(self.sampler_class) if n not in ("progress",)]

    def merged(self, explicit: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """The saved settings with the non-``None`` ``overrides`` applied, then ``explicit`` as given (a ``None`` there
        is a value, e.g. ``guidance_channels=None``); unknown names are a UserError."""
        allowed = set(self.allowed())
        values = {k: v for k, v in self.settings.items() if k in allowed}
        explicit = dict(explicit or {})
        bad = sorted(k for k, v in {**overrides, **explicit}.items()
                     if (v is not None or k in explicit) and k not in allowed)
        if bad:
            raise UserError(f"unknown settings {bad} for {self.sampler_class.__name__}; allowed: {sorted(allowed)}")
        for k, v in overrides.items():
            if v is not None:
                _check_value(k, v)
                values[k] = v
        for k, v in explicit.items():
            _check_value(k, v)
            values[k] = v
        return values

    def build(self, explicit: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
        """The configured sampler (non-``None`` ``overrides`` and then ``explicit`` replace saved settings), validated
        by the sampler itself."""
        cls = self.sampler_class
        values = self.merged(explicit, **overrides)
        try:
            sampler = cls(**values)
        except TypeError as e:
            raise UserError(f"{cls.__name__}: {e}") from None
        validate = getattr(sampler, "validate", None)
        if callable(validate):
            validate()
        return sampler

    def replace(self, **overrides: Any) -> "SamplerSettings":
        """New settings with ``overrides`` applied (validated by building the sampler once)."""
        values = self.merged(**overrides)
        out = type(self)(sampler=self.config.sampler, settings=values)
        out.build()
        return out

    @classmethod
    def for_sampler(cls, sampler_class: str | type, settings: Mapping[str, Any] | None = None,
                    **overrides: Any) -> "SamplerSettings":
        """Settings for ``sampler_class`` (a ``"module:Class"`` string or the class) from a config's ``sampler:``
        mapping (keys of other samplers are ignored) and explicit ``overrides`` (unknown keys refused)."""
        target = sampler_class if isinstance(sampler_class, str) else f"{sampler_class.__module__}:{sampler_class.__qualname__}"
        base = cls(sampler=target, settings={})
        allowed = set(base.allowed())
        values = {k: v for k, v in dict(settings or {}).items() if k in allowed}
        out = cls(sampler=target, settings=base.merged(**{**values, **overrides}))
        out.build()
        return out

    @classmethod
    def of(cls, sampler: Any) -> "SamplerSettings":
        """Settings that rebuild the sampler object ``sampler`` (its public attributes named like its arguments)."""
        sampler_cls = type(sampler)
        names = [n for n in _fields(sampler_cls) if n != "progress"]
        values = {n: getattr(sampler, n) for n in names if hasattr(sampler, n)}
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
        return cls(sampler=f"{sampler_cls.__module__}:{sampler_cls.__qualname__}", settings=values)
