"""DDPM and DDIM sampling of ε-prediction diffusion transformers through diffusers' schedulers.

DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with the learned-range variance of Nichol & Dhariwal
2021 (Eq. 15: Σ = exp(v·log β_t + (1−v)·log β̃_t), v = (out+1)/2) is what DiT uses (Peebles & Xie 2023,
§4: 250 steps, linear β from 1e-4 to 0.02 over 1000 steps). Respacing to fewer steps uses evenly spaced,
rounded timesteps (``"linspace"``: the set of the official ``space_timesteps(1000, "250")``, computed by the
same accumulated fractional stride, which differs from ``numpy.linspace`` rounding for some step counts,
e.g. 21), given to diffusers' ``DDPMScheduler`` as custom timesteps. DDIM (Song et al. 2021, Eq. 12, η = 0
by default) uses ``"leading"``: the integer stride of the official ``"ddimN"`` respacing (the smallest k with
``len(range(0, 1000, k)) == N``; diffusers' ``1000 // N`` where no such k exists), the cumulative alphas of
diffusers' ``DDIMScheduler``, and steps to the *next timestep in the list* (so any spacing is exact), and
ignores the variance channels.

Classifier-free guidance (Ho & Salimans 2022) is the official ``forward_with_cfg``: the batch is
[x; x] with labels [y; null], guidance on the first ``guidance_channels`` (3) output channels, and the
conditional half's variance prediction drives the step.

Two timestep rules (``timestep_rule``): ``"official"`` (above: the IDDPM/DiT respacing, DDIM stepping to the
next listed timestep) and ``"diffusers"``: the diffusers scheduler's own ``set_timesteps(n)`` (with its
``timestep_spacing`` / ``steps_offset``) and ``step``, so that a sampler made by :meth:`DDPMSampler.from_scheduler_config`
from a diffusers ``DDPMScheduler`` / ``DDIMScheduler`` config reproduces diffusers' ``DiTPipeline`` (its
``clip_sample``, ``prediction_type``, ``variance_type`` … honoured).

Precision: the state x_t, the noise and every diffusion coefficient are float32 (float64 in the DDIM
update) whatever the model's dtype; the model sees x_t cast to its dtype and its output is cast back to
float32 before guidance and the step. What :meth:`DDPMSampler.sample` returns is float32.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators

#: callback(step, timestep, state) -> replacement tensors or None (diffusers' callback_on_step_end semantics)
StepCallback = Callable[[int, float, dict[str, torch.Tensor]], "dict[str, torch.Tensor] | None"]

SPACINGS = ("linspace", "leading", "trailing")
TIMESTEP_RULES = ("official", "diffusers")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
SCHEDULER_METHODS = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim"}
# diffusers scheduler config key -> DDPMSampler field (same name); the other keys of the scheduler's __init__
# must keep their default value (anything else is a setting this sampler does not reproduce)
_MAPPED = {"ddpm": ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample", "clip_sample_range",
                    "prediction_type", "variance_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr"),
           "ddim": ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample", "clip_sample_range",
                    "prediction_type", "timestep_spacing", "steps_offset", "set_alpha_to_one", "rescale_betas_zero_snr")}
# settings that only matter with a setting we refuse (dynamic thresholding)
_INERT = ("dynamic_thresholding_ratio", "sample_max_value")


@dataclass
class DDPMSampler:
    """Drive an ε-prediction model (``model(x, t, y)``) from Gaussian noise to a latent sample."""

    num_inference_steps: int = 250
    guidance_scale: float = 1.0
    method: str = "ddpm"  # or "ddim"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    guidance_channels: int | None = 3  # official DiT; None = all latent channels
    eta: float = 0.0  # DDIM only
    timestep_spacing: str | None = None  # default: linspace for DDPM, leading for DDIM (official); leading (diffusers)
    timestep_rule: str = "official"  # or "diffusers" (the scheduler's own set_timesteps / step; see the module doc)
    steps_offset: int = 0  # diffusers rule: added to every timestep (diffusers' steps_offset)
    clip_sample: bool = False  # clamp the predicted x_0 to ±clip_sample_range (official DiT: False)
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"  # what the model predicts: epsilon, sample (x_0) or v_prediction
    variance_type: str | None = None  # DDPM; None: learned_range for a model with 2C outputs, fixed_large otherwise
    set_alpha_to_one: bool = True  # DDIM: the last step goes to alpha-bar = 1 (else alpha-bar_0)
    rescale_betas_zero_snr: bool = False  # Lin et al. 2024 (diffusers' rescale_betas_zero_snr)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> "DDPMSampler":
        """From a config's ``sampler:`` section; keys that belong to other samplers are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        merged = {k: v for k, v in {**data, **overrides}.items() if k in known and v is not None}
        return cls(**merged)

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any] | Any, method: str | None = None,
                              **overrides: Any) -> "DDPMSampler":
        """A sampler that reproduces a diffusers ``DDPMScheduler`` / ``DDIMScheduler`` (its config mapping, e.g.
        ``scheduler_config.json`` of a ``DiTPipeline`` folder, or the scheduler object itself).

        The class comes from ``_class_name`` (or ``method=`` "ddpm" / "ddim" when the mapping has none, as
        ``scheduler.config``); ``num_train_timesteps``, the betas, ``clip_sample(_range)``, ``prediction_type``,
        ``variance_type``, ``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one`` and
        ``rescale_betas_zero_snr`` are honoured through ``timestep_rule="diffusers"``. Settings it cannot
        reproduce (another scheduler class, ``trained_betas``, ``thresholding``, values diffusers itself
        rejects, any other non-default setting) are a :class:`UserError`; keys the scheduler class does not
        take are ignored, as diffusers' ``from_config`` ignores them. ``overrides`` set sampler fields that a
        scheduler config does not hold (``num_inference_steps``, ``guidance_scale``, ``guidance_channels``
        — ``None`` guides every latent channel as diffusers' ``DiTPipeline`` does —, ``eta``).
        """
        from diffusers import DDIMScheduler, DDPMScheduler

        owner = None
        if not isinstance(config, Mapping) and hasattr(config, "config"):  # a scheduler object
            owner = type(config).__name__
            config = dict(config.config)
        data = dict(config)
        owner = data.pop("_class_name", None) or owner
        if owner is not None:
            if owner not in SCHEDULER_METHODS:
                raise UserError(f"scheduler {owner} cannot be reproduced by mgen's DDPM sampler "
                                f"(it follows {' and '.join(SCHEDULER_METHODS)})")
            if method is not None and SCHEDULER_METHODS[owner] != method:
                raise UserError(f"method={method!r} contradicts the scheduler config's {owner}")
            method = SCHEDULER_METHODS[owner]
        if method is None:
            method = "ddpm" if "variance_type" in data else "ddim" if "set_alpha_to_one" in data else None
        if method not in ("ddpm", "ddim"):
            raise UserError("cannot tell DDPMScheduler from DDIMScheduler: the config has no _class_name; pass method='ddpm' or 'ddim'")
        sched_cls = DDPMScheduler if method == "ddpm" else DDIMScheduler
        params = {n: p.default for n, p in inspect.signature(sched_cls.__init__).parameters.items()
                  if n not in ("self", "kwargs") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key.startswith("_") or key not in params:
                continue  # diffusers' own metadata, or a key the scheduler ignores too
            if key in _MAPPED[method]:
                values[key] = value
            elif key in _INERT and not data.get("thresholding"):
                continue
            elif value != params[key] and not (isinstance(value, (list, tuple)) and list(value) == params[key]):
                what = {"trained_betas": "a trained beta table", "thresholding": "dynamic thresholding"}.get(key, f"{key}={value!r}")
                raise UserError(f"{owner or sched_cls.__name__}: {what} is not supported by mgen's DDPM sampler")
        # diffusers' defaults for what the config leaves out (they differ from the official DiT ones)
        for key in _MAPPED[method]:
            values.setdefault(key, params[key])
        if values.get("timestep_spacing") not in SPACINGS:
            raise UserError(f"timestep_spacing {values.get('timestep_spacing')!r} is not one of {', '.join(SPACINGS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise UserError(f"unknown DDPM sampler settings {bad}; allowed: {sorted(fields)}")
        sampler = cls(method=method, timestep_rule="diffusers", **{**values, **overrides})
        sampler.validate()
        return sampler

    def validate(self) -> None:
        if int(self.num_inference_steps) < 1:
            raise UserError(f"num_inference_steps must be >= 1; got {self.num_inference_steps}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise UserError(f"num_inference_steps ({self.num_inference_steps}) cannot exceed the "
                            f"{self.num_train_timesteps} training timesteps")
        if self.method not in ("ddpm", "ddim"):
            raise UserError(f"unknown diffusion sampling method {self.method!r}; choose ddpm or ddim")
        spacing = self._spacing()
        if spacing not in SPACINGS:
            raise UserError(f"unknown timestep_spacing {spacing!r}; choose linspace, leading or trailing")
        checks = (("timestep_rule", self.timestep_rule, TIMESTEP_RULES), ("prediction_type", self.prediction_type, PREDICTION_TYPES),
                  ("beta_schedule", self.beta_schedule, BETA_SCHEDULES))
        for name, value, allowed in checks:
            if value not in allowed:
                raise UserError(f"unknown {name} {value!r}; choose {', '.join(allowed)}")
        if self.variance_type is not None and self.variance_type not in VARIANCE_TYPES:
            raise UserError(f"unknown variance_type {self.variance_type!r}; choose {', '.join(VARIANCE_TYPES)}")
        if not float(self.clip_sample_range) > 0:
            raise UserError(f"clip_sample_range must be positive; got {self.clip_sample_range}")
        if float(self.eta) < 0:
            raise UserError(f"eta must be >= 0; got {self.eta}")

    def _spacing(self) -> str:
        if self.timestep_spacing:
            return self.timestep_spacing
        return "leading" if (self.timestep_rule == "diffusers" or self.method == "ddim") else "linspace"

    def timestep_list(self) -> list[int]:
        """The descending training timesteps the sampler visits (see the module docstring)."""
        self.validate()
        if self.timestep_rule == "diffusers":
            return [int(t) for t in self.make_scheduler().timesteps]
        T, n = int(self.num_train_timesteps), int(self.num_inference_steps)
        spacing = self._spacing()
        if spacing == "linspace":  # evenly spaced, rounded, by an accumulated fractional stride (IDDPM respacing)
            stride, cur, ts = (1.0 if n <= 1 else (T - 1) / (n - 1)), 0.0, []
            for _ in range(n):
                ts.append(round(cur))
                cur += stride
        elif spacing == "leading":  # DDIM's integer stride (Song et al. 2021, §C.2)
            k = next((i for i in range(1, T) if len(range(0, T, i)) == n), T // n)
            ts = list(range(0, T, k))[:n]
        else:  # trailing (Lin et al. 2024, Table 2): end at T - 1
            ts = [int(round(T - i * T / n)) - 1 for i in range(n)]
        return sorted(set(int(t) for t in ts), reverse=True)

    @property
    def total_steps(self) -> int:
        """How many decoding steps (callback calls) :meth:`sample` makes."""
        return len(self.timestep_list())

    def _variance_type(self, learn_sigma: bool) -> str:
        return self.variance_type or ("learned_range" if learn_sigma else "fixed_large")

    def make_scheduler(self, learn_sigma: bool = True):
        """The diffusers ``DDPMScheduler`` / ``DDIMScheduler`` of this diffusion, with its timesteps set: the
        official respacing as custom timesteps, or (``timestep_rule="diffusers"``) its own ``set_timesteps``."""
        from diffusers import DDIMScheduler, DDPMScheduler

        common = dict(num_train_timesteps=int(self.num_train_timesteps), beta_start=float(self.beta_start),
                      beta_end=float(self.beta_end), beta_schedule=self.beta_schedule, clip_sample=bool(self.clip_sample),
                      clip_sample_range=float(self.clip_sample_range), prediction_type=self.prediction_type,
                      rescale_betas_zero_snr=bool(self.rescale_betas_zero_snr))
        diffusers_rule = self.timestep_rule == "diffusers"
        if diffusers_rule:
            common.update(timestep_spacing=self._spacing(), steps_offset=int(self.steps_offset))
        if self.method == "ddpm":
            sched = DDPMScheduler(**common, variance_type=self._variance_type(learn_sigma))
            if diffusers_rule:
                sched.set_timesteps(int(self.num_inference_steps))
            else:
                sched.set_timesteps(timesteps=self.timestep_list())
        else:
            sched = DDIMScheduler(**common, set_alpha_to_one=bool(self.set_alpha_to_one))
            if diffusers_rule:
                sched.set_timesteps(int(self.num_inference_steps))
            else:
                ts = self.timestep_list()
                sched.timesteps = torch.tensor(ts, dtype=torch.long)
                sched.num_inference_steps = len(ts)
        return sched

    @staticmethod
    def ddim_step(sched: Any, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, eta: float = 0.0,
                  noise: torch.Tensor | None = None, prediction_type: str = "epsilon",
                  clip_range: float | None = None) -> torch.Tensor:
        """x_{t_prev} from x_t and the model output (Song et al. 2021, Eq. 12; σ from Eq. 16 scaled by η), in
        float64; t_prev < 0 is the final step to ᾱ = ``final_alpha_cumprod`` (x_0 itself when η = 0).

        ``eps`` is the prediction of ``prediction_type`` (ε, x_0 or v); ``clip_range`` clamps the predicted
        x_0 (diffusers' ``clip_sample``; ε is not recomputed, as diffusers' default)."""
        ac = sched.alphas_cumprod.to(torch.float64)
        a = ac[t]
        a_prev = ac[t_prev] if t_prev >= 0 else torch.tensor(float(sched.final_alpha_cumprod), dtype=torch.float64)
        x64, out64 = x.to(torch.float64), eps.to(torch.float64)
        if prediction_type == "epsilon":
            e64 = out64
            x0 = (x64 - (1 - a).sqrt() * e64) / a.sqrt()
        elif prediction_type == "sample":
            x0 = out64
            e64 = (x64 - a.sqrt() * x0) / (1 - a).sqrt()
        else:  # v_prediction (Salimans & Ho 2022): v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x_0
            x0 = a.sqrt() * x64 - (1 - a).sqrt() * out64
            e64 = a.sqrt() * out64 + (1 - a).sqrt() * x64
        if clip_range is not None:
            x0 = x0.clamp(-clip_range, clip_range)
        sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
        out = x0 * a_prev.sqrt() + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * e64
        if eta > 0 and t_prev >= 0:
            if noise is None:
                raise ValueError("DDIM with eta > 0 needs noise")
            out = out + sigma * noise.to(torch.float64)
        return out.to(x.dtype)

    def model_output(self, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, null: int) -> torch.Tensor:
        """One network evaluation (x cast to the model's dtype), guided when ``guidance_scale != 1``; returns
        the conditional half in float32."""
        x = x.to(model_dtype(model))
        if self.guidance_scale == 1.0:
            return model(x, t, y).float()
        b = x.shape[0]
        xx = torch.cat([x, x], dim=0)
        yy = torch.cat([y, torch.full_like(y, null)], dim=0)
        out = model.forward_with_cfg(xx, torch.cat([t, t], dim=0), yy, self.guidance_scale,
                                     guidance_channels=self.guidance_channels)
        return out[:b].float()

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, class_labels: torch.Tensor | list[int], *,
               generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
               latent_shape: tuple[int, int, int] | None = None, callback: StepCallback | None = None) -> torch.Tensor:
        """Float32 latents (B, C, H, W) for ``class_labels``; sample i depends only on (generator state, i).

        ``latents``: the initial noise x_T (default: drawn per sample from ``generator``). ``callback(step,
        timestep, {"latents": x})`` is called after every step (0-based; ``timestep`` is the one the model was
        evaluated at); a dict it returns replaces the named state (``"latents"``), as diffusers'
        ``callback_on_step_end``. :attr:`total_steps` says how many calls there will be.
        """
        self.validate()
        cfg = model.config
        device = model_device(model)
        y = check_labels(class_labels, cfg.num_classes, device)
        b = y.shape[0]
        shape = tuple(latent_shape or (cfg.in_channels, cfg.input_size, cfg.input_size))
        gens = per_sample_generators(generator, b, device)
        if latents is None:
            latents = torch.stack([torch.randn(shape, generator=g, device=device, dtype=torch.float32) for g in gens])
        elif latents.shape[0] != b:
            raise UserError(f"latents hold {latents.shape[0]} samples but {b} class labels were given")
        learn_sigma = _learns_sigma(model)
        variance = self._variance_type(learn_sigma)
        if variance.startswith("learned") and self.method == "ddpm" and not learn_sigma:
            raise UserError(f"variance_type {variance} needs a model that predicts its variance (learn_sigma)")
        sched = self.make_scheduler(learn_sigma=learn_sigma)
        x = latents.to(device=device, dtype=torch.float32)
        c = x.shape[1]
        ts = [int(t) for t in sched.timesteps]
        clip = float(self.clip_sample_range) if self.clip_sample else None
        for i, t in enumerate(ts):
            tt = torch.full((b,), t, device=device, dtype=torch.long)
            out = self.model_output(model, x, tt, y, cfg.num_classes)
            if self.method == "ddim":
                if self.timestep_rule == "diffusers":
                    x = sched.step(out[:, :c], t, x, eta=float(self.eta), generator=gens).prev_sample
                else:
                    t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                    noise = None
                    if self.eta > 0 and t_prev >= 0:
                        noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=device, dtype=x.dtype) for g in gens])
                    x = self.ddim_step(sched, out[:, :c], t, t_prev, x, self.eta, noise, self.prediction_type, clip)
            else:
                step_in = out if variance.startswith("learned") else out[:, :c]
                x = sched.step(step_in, t, x, generator=gens).prev_sample
            x = x.float()
            if callback is not None:
                x = apply_callback(callback, i, float(t), {"latents": x})["latents"].to(device=device, dtype=torch.float32)
        return x


def apply_callback(callback: StepCallback, step: int, timestep: float, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run a step callback; the tensors it returns under the state's names replace them (others are ignored,
    as diffusers' pipelines pop only the names they know)."""
    out = callback(step, timestep, dict(state))
    if out:
        for k in state:
            if k in out and out[k] is not None:
                state[k] = out[k]
    return state


def model_dtype(model: Any) -> torch.dtype:
    """The dtype a model's inputs should have: its ``dtype`` (mgen models: the token stream's) or its first
    floating parameter's; float32 for plain callables."""
    dt = getattr(model, "dtype", None)
    if isinstance(dt, torch.dtype):
        return dt
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.float32


def model_device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    p = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


def _learns_sigma(model: Any) -> bool:
    """Whether the model predicts the variance too (2C output channels): ``out_channels`` or ``config.learn_sigma``."""
    out = getattr(model, "out_channels", None)
    inc = getattr(model, "in_channels", None)
    if isinstance(out, int) and isinstance(inc, int):
        return out == 2 * inc
    return bool(getattr(model.config, "learn_sigma", False))


def check_labels(class_labels: torch.Tensor | list[int], num_classes: int, device: torch.device | str) -> torch.Tensor:
    """Class labels as a (B,) long tensor; unknown classes are a :class:`UserError`."""
    y = torch.as_tensor(class_labels).reshape(-1)
    if y.numel() == 0:
        raise UserError("give at least one class label")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise UserError("class labels must be integers")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.numel():
        raise UserError(f"unknown class {int(bad[0])}: this model has classes 0..{num_classes - 1}")
    return y.to(device=device, dtype=torch.long)


# -- training objective ------------------------------------------------------------------------------

def _normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of a Gaussian integrated over the bin [x − 1/255, x + 1/255] (Ho et al. 2020 §3.3, the
    decoder term L_0), with the tanh approximation of the normal CDF used by the official code."""
    def cdf(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))

    centered = x - mean
    inv = torch.exp(-log_scale)
    cdf_plus = cdf(inv * (centered + 1.0 / 255.0))
    cdf_min = cdf(inv * (centered - 1.0 / 255.0))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_one_minus_min, log_delta))


def ddpm_training_loss(model: torch.nn.Module, x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                       num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DiT's training loss (Peebles & Xie 2023 §3.1; Nichol & Dhariwal 2021 §3.1 L_hybrid).

    L_simple = ‖ε − ε_θ(x_t, t, y)‖² on t ~ U{0..T−1}; with a learned variance (2C output channels)
    L_vlb (Ho et al. 2020 Eq. 5, KL of the posterior q(x_{t−1}|x_t, x_0) to p_θ with the learned-range
    variance, in bits per dimension; the decoder NLL at t = 0) is added with the mean's gradient
    stopped, as in the official ``training_losses`` with the MSE loss type.
    """
    b = x0.shape[0]
    dev = x0.device
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))  # clipped at t = 0 (IDDPM)
    coef_x0 = betas * abar_prev.sqrt() / (1.0 - abar)
    coef_xt = (1.0 - abar_prev) * (1.0 - betas).sqrt() / (1.0 - abar)

    gdev = generator.device
    t = torch.randint(0, num_train_timesteps, (b,), generator=generator, device=gdev).to(dev)
    noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(dev)

    def at(arr: torch.Tensor) -> torch.Tensor:
        return arr.to(dev)[t].float().reshape(b, *([1] * (x0.ndim - 1)))

    xt = at(abar.sqrt()) * x0 + at((1.0 - abar).sqrt()) * noise
    out = model(xt, t, y, generator=generator)
    c = x0.shape[1]
    eps = out[:, :c].float()
    loss = ((noise.float() - eps) ** 2).mean(dim=tuple(range(1, x0.ndim)))
    if out.shape[1] == 2 * c:
        frac = (out[:, c:].float() + 1) / 2
        logvar = frac * at(torch.log(betas)) + (1 - frac) * at(post_logvar)
        x0_pred = (xt.float() - at((1.0 - abar).sqrt()) * eps.detach()) / at(abar.sqrt())
        mean = at(coef_x0) * x0_pred + at(coef_xt) * xt.float()
        true_mean = at(coef_x0) * x0.float() + at(coef_xt) * xt.float()
        kl = _normal_kl(true_mean, at(post_logvar), mean, logvar).mean(dim=tuple(range(1, x0.ndim))) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0.float(), mean, 0.5 * logvar).mean(dim=tuple(range(1, x0.ndim))) / math.log(2.0)
        loss = loss + torch.where(t == 0, nll, kl)
    return loss.mean()
