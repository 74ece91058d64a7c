"""Flow matching with the linear (rectified-flow) path: training targets, time sampling, the RAE
dimension-dependent shift, and Euler / Heun ODE samplers with classifier-free guidance on an interval.

Path (Lipman et al. 2023; Liu et al. 2023; the convention of Zheng et al. 2025, "Diffusion Transformers
with Representation Autoencoders", §4): x_t = (1 − t)·x + t·ε, t = 0 data, t = 1 noise; the network
predicts the velocity v = dx_t/dt = ε − x.

Time distribution: logit-normal (Esser et al. 2024, SD3 Eq. 19: t = sigmoid(n), n ~ N(μ, σ²)) or uniform,
followed by the shift t' = α·t / (1 + (α − 1)·t) with α = sqrt(C·H·W / 4096) (RAE §4.1, "dimension-
dependent noise schedule shift"; base 4096 = 4×32×32, the SD-VAE latent of DiT). The same shift maps the
uniform sampling grid 1 → 0; it equals diffusers' ``FlowMatchEulerDiscreteScheduler(shift=α)`` sigmas,
which the sampler uses to build its grid.

Two time grids (``time_grid``):
- ``"uniform"``: N + 1 shifted times 1 = t_0 > … > t_N = 0, N steps (diffusers' flow-matching scheduler);
- ``"rae"``: the grid of the RAE release's ODE sampler (``Sampler.sample_ode``, torchdiffeq fixed-grid
  ``euler`` / ``heun2``): N times t_i = shift(1 − i·0.999/(N − 1)) in float32, i.e. N − 1 steps that stop at
  t = shift(0.001) without a final step to 0 (RAE's ``check_interval``: t1 = 1 − 1/1000), Heun on every step.
  ``num_inference_steps`` is RAE's ``num_steps`` (50 → 49 network evaluations per Euler sample).

Guidance (Ho & Salimans 2022) is applied only for t in ``guidance_interval`` (Kynkäänniemi et al. 2024),
on all latent channels (or the first ``guidance_channels``).

Steps: the Euler step (and Heun's predictor) is diffusers' ``FlowMatchEulerDiscreteScheduler.step``
(x + (σ_{i+1} − σ_i)·v, the same sign convention: v = ε − x, σ = t) on the grid passed through
``set_timesteps(sigmas=...)``; Heun's corrector is hand-written (see :meth:`FlowSampler.sample`).
``tests/samplers/test_flow_library_step.py`` holds the previous formula and proves the two equal.

Precision: the state x_t, the noise, the times and the Euler/Heun updates are float32 whatever the model's
dtype; the model sees x_t cast to its dtype and its velocity is cast back to float32 (guidance included).
What :meth:`FlowSampler.sample` returns is float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators
from mgen.samplers.ddpm import StepCallback, apply_callback, model_device, model_dtype, check_labels

SHIFT_BASE_DIM = 4096  # RAE: the shift is relative to a 4x32x32 latent (DiT on SD-VAE)


def rae_shift(channels: int, height: int, width: int, base: int = SHIFT_BASE_DIM) -> float:
    """α = sqrt(C·H·W / base) (RAE §4.1); e.g. 768×16×16 DINOv2-B tokens → sqrt(196608/4096) ≈ 6.93."""
    return math.sqrt(channels * height * width / base)


def shift_time(t: torch.Tensor | float, alpha: float) -> torch.Tensor | float:
    """t' = α·t / (1 + (α − 1)·t): maps [0, 1] onto itself, pushing t towards noise for α > 1."""
    return alpha * t / (1 + (alpha - 1) * t)


def sample_time(n: int, generator: torch.Generator | None = None, distribution: str = "logit-normal",
                mu: float = 0.0, sigma: float = 1.0, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Training times t ∈ (0, 1): logit-normal(μ, σ) or uniform, then :func:`shift_time` with ``shift``."""
    dev = generator.device if generator is not None else device
    if distribution == "logit-normal":
        t = torch.sigmoid(mu + sigma * torch.randn(n, generator=generator, device=dev))
    elif distribution == "uniform":
        t = torch.rand(n, generator=generator, device=dev)
    else:
        raise UserError(f"unknown time distribution {distribution!r}; choose logit-normal or uniform")
    return shift_time(t, shift).to(device)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x + t·ε with t (B,) broadcast over the other dimensions."""
    tt = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (1 - tt) * x + tt * noise


def flow_matching_loss(model: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor | None,
                       generator: torch.Generator, distribution: str = "logit-normal", shift: float = 1.0,
                       mu: float = 0.0, sigma: float = 1.0, label_dropout_generator: bool = False) -> torch.Tensor:
    """E‖v_θ(x_t, t, y) − (ε − x)‖² (conditional flow matching, Lipman et al. 2023 Eq. 23).

    ``label_dropout_generator``: pass ``generator`` on to the model (mgen transformers draw their
    classifier-free-guidance label dropout from it)."""
    t = sample_time(x.shape[0], generator, distribution, mu, sigma, shift, device=x.device)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    xt = interpolate(x, noise, t)
    pred = model(xt, t, y, generator=generator) if label_dropout_generator else model(xt, t, y)
    return ((pred.float() - (noise - x).float()) ** 2).mean()


@dataclass
class FlowSampler:
    """Integrate dx/dt = v(x, t, y) from t = 1 (noise) to t = 0 (data) with Euler or Heun steps."""

    num_inference_steps: int = 50
    method: str = "euler"  # or "heun"
    shift: float | str = 1.0  # a number, or "auto" = rae_shift of the latent shape
    guidance_scale: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    guidance_channels: int | None = None  # None: every channel
    time_grid: str = "uniform"  # or "rae" (the RAE release's ODE grid, see the module docstring)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], **overrides: Any) -> "FlowSampler":
        import dataclasses

        known = {f.name for f in dataclasses.fields(cls)}
        merged = {k: v for k, v in {**data, **overrides}.items() if k in known and v is not None}
        if "guidance_interval" in merged:
            merged["guidance_interval"] = tuple(float(v) for v in merged["guidance_interval"])
        return cls(**merged)

    def validate(self) -> None:
        if int(self.num_inference_steps) < 1:
            raise UserError(f"num_inference_steps must be >= 1; got {self.num_inference_steps}")
        if self.method not in ("euler", "heun"):
            raise UserError(f"unknown flow sampling method {self.method!r}; choose euler or heun")
        lo, hi = self.guidance_interval
        if not 0.0 <= lo < hi <= 1.0:
            raise UserError(f"guidance_interval must satisfy 0 <= min < max <= 1; got {self.guidance_interval}")
        if not (self.shift == "auto" or float(self.shift) > 0):
            raise UserError(f"shift must be positive or 'auto'; got {self.shift!r}")
        if self.time_grid not in ("uniform", "rae"):
            raise UserError(f"unknown time_grid {self.time_grid!r}; choose uniform or rae")
        if self.time_grid == "rae" and int(self.num_inference_steps) < 2:
            raise UserError("time_grid rae needs num_inference_steps >= 2 (it counts grid points, as RAE's num_steps)")

    def resolve_shift(self, shape: tuple[int, ...]) -> float:
        if self.shift == "auto":
            c, h, w = shape[-3:] if len(shape) >= 3 else (int(np.prod(shape)), 1, 1)
            return rae_shift(c, h, w)
        return float(self.shift)

    def timesteps(self, shape: tuple[int, ...] = (4, 32, 32)) -> torch.Tensor:
        """The shifted times: N + 1 from 1 to 0 through diffusers' flow-matching scheduler ("uniform"),
        or RAE's N float32 times from 1 to shift(0.001) ("rae")."""
        self.validate()
        n = int(self.num_inference_steps)
        if self.time_grid == "rae":
            a = self.resolve_shift(shape)
            t = 1 - torch.linspace(0, 1 - 1 / 1000, n)  # float32, as the release
            return (a * t / (1 + (a - 1) * t)).to(torch.float64)
        sched = FlowMatchEulerDiscreteScheduler(shift=self.resolve_shift(shape))
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, n + 1)[:-1])
        return sched.sigmas.to(torch.float64)

    @staticmethod
    def euler_scheduler(ts: torch.Tensor) -> FlowMatchEulerDiscreteScheduler:
        """diffusers' flow-matching Euler scheduler holding exactly the grid ``ts`` (from :meth:`timesteps`).

        ``shift=1.0`` because ``ts`` is already shifted (``set_timesteps`` shifts what it is given, and with
        α = 1 its α·s / (1 + 0·s) returns s bit for bit); the scheduler appends σ = 0 itself, so a grid that
        ends at 0 (uniform) passes without its last point and RAE's grid (ending at shift(0.001)) whole, its
        appended 0 never reached. ``ts`` holds float32 values, so ``sched.sigmas`` equals it exactly.
        ``set_begin_index(0)``: step i uses σ_i, σ_{i+1} without looking the timestep up."""
        sigmas = ts[:-1] if float(ts[-1]) == 0.0 else ts
        sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
        sched.set_timesteps(sigmas=sigmas.to(torch.float32).numpy())
        sched.set_begin_index(0)
        return sched

    @property
    def total_steps(self) -> int:
        """How many integration steps (callback calls) :meth:`sample` makes: ``num_inference_steps`` on the
        uniform grid, one fewer on RAE's grid (it counts grid points)."""
        self.validate()
        n = int(self.num_inference_steps)
        return n - 1 if self.time_grid == "rae" else n

    def velocity(self, model: Callable[..., torch.Tensor], x: torch.Tensor, t: float, y: torch.Tensor | None,
                 null: int | None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """v(x, t, y), guided inside ``guidance_interval``; the model runs in ``dtype`` (default: x's), the
        result and the guidance arithmetic are float32."""
        b = x.shape[0]
        tt = torch.full((b,), float(t), device=x.device, dtype=torch.float32)
        xin = x if dtype is None else x.to(dtype)
        lo, hi = self.guidance_interval
        if self.guidance_scale == 1.0 or y is None or not (lo <= t <= hi):
            return model(xin, tt, y).float()
        out = model(torch.cat([xin, xin]), torch.cat([tt, tt]), torch.cat([y, torch.full_like(y, null)])).float()
        cond, uncond = out[:b], out[b:]
        k = cond.shape[1] if self.guidance_channels is None else int(self.guidance_channels)
        guided = uncond[:, :k] + self.guidance_scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([guided, cond[:, k:]], dim=1)

    @torch.no_grad()
    def sample(self, model: Callable[..., torch.Tensor], class_labels: torch.Tensor | list[int] | None = None, *,
               shape: tuple[int, ...] | None = None, batch_size: int | None = None,
               generator: torch.Generator | list[torch.Generator] | None = None, noise: torch.Tensor | None = None,
               num_classes: int | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, callback: StepCallback | None = None) -> torch.Tensor:
        """Float32 samples (B, *shape) for ``class_labels`` (or ``batch_size`` unconditional samples).

        ``shape`` defaults to the model's (in_channels, input_size, input_size). Sample i's noise comes
        from its own generator stream, so it does not depend on the batch size. ``dtype``: the dtype the
        model is evaluated in (default: the model's); the state stays float32. ``callback(step, t,
        {"latents": x})`` runs after every step (``t`` the step's start time); a dict it returns replaces
        ``"latents"`` (diffusers' ``callback_on_step_end``). :attr:`total_steps` counts the calls.
        """
        cfg = getattr(model, "config", None)
        device = torch.device(device) if device is not None else model_device(model)
        dtype = dtype or model_dtype(model)
        if num_classes is None and cfg is not None:
            num_classes = getattr(cfg, "num_classes", None)
        y = None
        if class_labels is not None:
            if num_classes is None:
                raise UserError("class labels given to an unconditional model")
            y = check_labels(class_labels, num_classes, device)
            batch_size = y.shape[0]
        if batch_size is None:
            raise UserError("give class_labels or batch_size")
        if shape is None:
            if cfg is None:
                raise UserError("give the sample shape")
            shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        ts = self.timesteps(tuple(shape))
        if noise is None:
            gens = per_sample_generators(generator, batch_size, device)
            noise = torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=torch.float32) for g in gens])
        elif noise.shape[0] != batch_size:
            raise UserError(f"the initial noise holds {noise.shape[0]} samples but the batch is {batch_size}")
        x = noise.to(device=device, dtype=torch.float32)
        sched = self.euler_scheduler(ts)
        for i in range(len(ts) - 1):
            t, t_next = float(ts[i]), float(ts[i + 1])
            d = self.velocity(model, x, t, y, num_classes, dtype)
            # the Euler step (and Heun's predictor): diffusers' x + (σ_{i+1} − σ_i)·v, float32
            x_euler = sched.step(d, sched.timesteps[i], x, return_dict=False)[0]
            if self.method == "heun" and t_next > 0:  # Heun's 2nd order (Karras et al. 2022, Alg. 1; torchdiffeq heun2)
                # Hand-written corrector, not diffusers' FlowMatchHeunDiscreteScheduler: that scheduler's
                # set_timesteps takes no sigmas= (it cannot run the uniform 1 → 0 grid), on RAE's grid it adds a
                # final Euler step to 0 that the release does not take, and it rebuilds the velocity as
                # (x − (x − v·σ))/σ, which is not v in float32 (tests/samplers/test_flow_library_step.py measures it).
                d2 = self.velocity(model, x_euler, t_next, y, num_classes, dtype)
                x = x + (t_next - t) * 0.5 * (d + d2)
            else:
                x = x_euler
            if callback is not None:
                x = apply_callback(callback, i, t, {"latents": x})["latents"].to(device=device, dtype=torch.float32)
        return x
