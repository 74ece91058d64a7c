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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators


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
    timestep_spacing: str | None = None  # default: linspace for DDPM, leading for DDIM
    progress: bool = False

    @classmethod
    def from_mapping(cls, data: dict[str, Any], **overrides: Any) -> "DDPMSampler":
        """From a config's ``sampler:`` section; keys that belong to other samplers are ignored."""
        import dataclasses

        known = {f.name for f in dataclasses.fields(cls)}
        merged = {k: v for k, v in {**data, **overrides}.items() if k in known and v is not None}
        return cls(**merged)

    def validate(self) -> None:
        if int(self.num_inference_steps) < 1:
            raise UserError(f"num_inference_steps must be >= 1; got {self.num_inference_steps}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise UserError(f"num_inference_steps ({self.num_inference_steps}) cannot exceed the "
                            f"{self.num_train_timesteps} training timesteps")
        if self.method not in ("ddpm", "ddim"):
            raise UserError(f"unknown diffusion sampling method {self.method!r}; choose ddpm or ddim")
        spacing = self.timestep_spacing or ("linspace" if self.method == "ddpm" else "leading")
        if spacing not in ("linspace", "leading", "trailing"):
            raise UserError(f"unknown timestep_spacing {spacing!r}; choose linspace, leading or trailing")

    def timestep_list(self) -> list[int]:
        """The descending training timesteps the sampler visits (see the module docstring)."""
        self.validate()
        T, n = int(self.num_train_timesteps), int(self.num_inference_steps)
        spacing = self.timestep_spacing or ("linspace" if self.method == "ddpm" else "leading")
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

    def make_scheduler(self, learn_sigma: bool = True):
        """A diffusers ``DDPMScheduler`` (custom timesteps) / ``DDIMScheduler`` configured as the DiT diffusion."""
        from diffusers import DDIMScheduler, DDPMScheduler

        ts = self.timestep_list()
        common = dict(num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
                      beta_schedule=self.beta_schedule, clip_sample=False, prediction_type="epsilon")
        if self.method == "ddpm":
            sched = DDPMScheduler(**common, variance_type="learned_range" if learn_sigma else "fixed_large")
            sched.set_timesteps(timesteps=ts)
        else:
            sched = DDIMScheduler(**common, set_alpha_to_one=True)
            sched.timesteps = torch.tensor(ts, dtype=torch.long)
            sched.num_inference_steps = len(ts)
        return sched

    @staticmethod
    def ddim_step(sched: Any, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, eta: float = 0.0,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_{t_prev} from x_t and ε_θ (Song et al. 2021, Eq. 12; σ from Eq. 16 scaled by η); t_prev < 0 is
        the final step to ᾱ = 1 (x_0 itself when η = 0)."""
        ac = sched.alphas_cumprod.to(torch.float64)
        a = ac[t]
        a_prev = ac[t_prev] if t_prev >= 0 else torch.tensor(float(sched.final_alpha_cumprod), dtype=torch.float64)
        x64, e64 = x.to(torch.float64), eps.to(torch.float64)
        x0 = (x64 - (1 - a).sqrt() * e64) / a.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
        out = x0 * a_prev.sqrt() + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * e64
        if eta > 0 and t_prev >= 0:
            if noise is None:
                raise ValueError("DDIM with eta > 0 needs noise")
            out = out + sigma * noise.to(torch.float64)
        return out.to(x.dtype)

    def model_output(self, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, null: int) -> torch.Tensor:
        """One network evaluation, guided when ``guidance_scale != 1``; returns the conditional half."""
        if self.guidance_scale == 1.0:
            return model(x, t, y)
        b = x.shape[0]
        xx = torch.cat([x, x], dim=0)
        yy = torch.cat([y, torch.full_like(y, null)], dim=0)
        out = model.forward_with_cfg(xx, torch.cat([t, t], dim=0), yy, self.guidance_scale,
                                     guidance_channels=self.guidance_channels)
        return out[:b]

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, class_labels: torch.Tensor | list[int], *,
               generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
               latent_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Latents (B, C, H, W) for ``class_labels``; sample i depends only on (generator state, i)."""
        cfg = model.config
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        y = check_labels(class_labels, cfg.num_classes, device)
        b = y.shape[0]
        shape = tuple(latent_shape or (cfg.in_channels, cfg.input_size, cfg.input_size))
        gens = per_sample_generators(generator, b, device)
        if latents is None:
            latents = torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in gens])
        elif latents.shape[0] != b:
            raise UserError(f"latents hold {latents.shape[0]} samples but {b} class labels were given")
        sched = self.make_scheduler(learn_sigma=cfg.out_channels == 2 * cfg.in_channels)
        x = latents.to(device=device, dtype=dtype)
        c = x.shape[1]
        steps = sched.timesteps
        if self.progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc=self.method)
        ts = [int(t) for t in sched.timesteps]
        for i, t in enumerate(steps):
            tt = torch.full((b,), int(t), device=device, dtype=torch.long)
            out = self.model_output(model, x, tt, y, cfg.num_classes)
            if self.method == "ddim":
                t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                noise = None
                if self.eta > 0 and t_prev >= 0:
                    noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=device, dtype=x.dtype) for g in gens])
                x = self.ddim_step(sched, out[:, :c], int(t), t_prev, x, self.eta, noise)
            else:
                x = sched.step(out, t, x, generator=gens).prev_sample
        return x


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
