"""MAR's diffusion-loss head: a small MLP denoiser for one continuous token, and its Gaussian diffusion.

Li et al. 2024, "Autoregressive Image Generation without Vector Quantization" (MAR), §3.2–3.3:
the transformer gives a condition vector ``z`` per token and a tiny denoiser ``ε_θ(x_t | t, z)`` models
``p(x | z)`` by diffusion. Training minimises eq. (2), ``E ||ε − ε_θ(√ᾱ_t·x + √(1−ᾱ_t)·ε | t, z)||²``;
sampling runs the reverse process, eq. (3), with the sampling noise scaled by a temperature τ (§3.3).

Everything here matches the official code (github.com/LTH14/mar, ``models/diffloss.py`` and
``diffusion/``, itself ADM/IDDPM's ``gaussian_diffusion.py``):

* network ``SimpleMLPAdaLN``: ``input_proj`` → ``depth`` residual blocks with adaLN modulation by
  ``y = time_embed(t) + cond_embed(z)`` → adaLN final layer; ``2·C`` outputs (ε and the learned
  variance interpolation). Parameter names are the official ones (``diffloss.net.*`` in a MAR
  state dict) so ``checkpoint-last.pth`` loads unchanged;
* noise schedule: the cosine ᾱ(t) of Nichol & Dhariwal 2021 ("Improved DDPM", eq. 17, s = 0.008,
  β clipped at 0.999) over 1000 training steps (MAR's choice; the official ``create_diffusion``'s
  ``"linear"`` DDPM schedule is selectable for small models, see ``noise_schedule``) — diffusers' ``DDPMScheduler(beta_schedule=
  "squaredcos_cap_v2")`` is the same schedule (tested), but we keep float64 like the official code;
* variance: "learned range" (IDDPM eq. 15), log σ² = v·log β_t + (1 − v)·log β̃_t with v = (out + 1)/2;
  loss = MSE(ε) + the VLB term (IDDPM eq. 16, bits) with a stop-gradient on the mean;
* sampling: respaced to ``num_sampling_steps`` (default 100) timesteps as IDDPM's ``space_timesteps``
  (same set as diffusers' ``timestep_spacing="linspace"``), x_{t−1} = μ_θ + τ·σ_θ·n (no noise at the last
  step), classifier-free guidance on ε with both halves in one batch (``forward_with_cfg``).

What diffusers lacks and is written here: the temperature, the learned-range VLB loss, and per-sample
noise streams (so a sample does not depend on its batch).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mgen.nn import TimestepEmbedder


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------
def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN for per-row vectors: x·(1 + scale) + shift, all (N, C) (or broadcastable)."""
    return x * (1 + scale) + shift


def _state_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the head's residual stream runs in: float64 for float64 inputs, else float32 (also for bf16/fp16
    weights: only the matmuls run in the reduced dtype, docs/ARCHITECTURE.md "Reduced precision")."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class ResBlock(nn.Module):
    """x + gate·MLP(adaLN(LN(x); y)) (MAR ``ResBlock``; keys ``in_ln``, ``mlp.0/2``, ``adaLN_modulation.1``).

    With reduced-precision weights the linears run in their dtype and everything else in ``x``'s dtype
    (float32): the casts are no-ops for a float32 model, which computes exactly the official block.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dt = self.mlp[0].weight.dtype
        shift, scale, gate = self.adaLN_modulation(y.to(dt)).to(x.dtype).chunk(3, dim=-1)
        h = _modulate(self.in_ln(x.to(self.in_ln.weight.dtype)).to(x.dtype), shift, scale)
        return x + gate * self.mlp(h.to(dt)).to(x.dtype)


class FinalLayer(nn.Module):
    """DiT's final layer for vectors: adaLN(LN(x); y) → Linear (keys ``norm_final``, ``linear``, ``adaLN_modulation.1``)."""

    def __init__(self, model_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(model_channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(model_channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 2 * model_channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dt = self.adaLN_modulation[-1].weight.dtype
        shift, scale = self.adaLN_modulation(y.to(dt)).to(x.dtype).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale).to(self.linear.weight.dtype)).to(x.dtype)


class SimpleMLPAdaLN(nn.Module):
    """The MAR denoiser ε_θ(x_t | t, z): (N, C) noisy tokens, (N,) timesteps, (N, Z) conditions → (N, 2C)."""

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, z_channels: int,
                 num_res_blocks: int, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.grad_checkpointing = grad_checkpointing
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linears, N(0, 0.02) timestep MLP, zero adaLN and output layers (as MAR / DiT)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def embed_condition(self, c: torch.Tensor) -> torch.Tensor:
        """``cond_embed(z)``: constant over the diffusion steps of one sampling call, so computed once."""
        return self.cond_embed(c.to(self.cond_embed.weight.dtype))

    def forward_embedded(self, x: torch.Tensor, t: torch.Tensor, c_emb: torch.Tensor) -> torch.Tensor:
        """The network with the condition already embedded; ``t`` is (N,) or a scalar-like (1,) tensor."""
        return self.forward_with_embeddings(x, self.time_embed(t.reshape(-1)), c_emb)

    def forward_with_embeddings(self, x: torch.Tensor, t_emb: torch.Tensor, c_emb: torch.Tensor) -> torch.Tensor:
        """The network given ``time_embed(t)`` ((N, W) or (1, W)) and ``cond_embed(z)`` (N, W).

        The result is in ``x``'s dtype, float32 for reduced-precision inputs (see :class:`ResBlock`)."""
        sd = _state_dtype(x)
        h = self.input_proj(x.to(self.input_proj.weight.dtype)).to(sd)
        y = t_emb.to(sd) + c_emb.to(sd)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            for block in self.res_blocks:
                h = checkpoint(block, h, y, use_reentrant=False)
        else:
            for block in self.res_blocks:
                h = block(h, y)
        return self.final_layer(h, y)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(x, t, self.embed_condition(c))


# --------------------------------------------------------------------------------------------------
# Gaussian diffusion (cosine schedule, learned-range variance, respacing)
# --------------------------------------------------------------------------------------------------
def cosine_betas(num_timesteps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), max_beta), ᾱ(s) = cos²((s + 0.008)/1.008 · π/2) (IDDPM eq. 17), float64."""
    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """DDPM's linear β from 1e-4 to 0.02, rescaled to ``num_timesteps`` (Ho et al. 2020 §4; IDDPM's "linear")."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


NOISE_SCHEDULES = {"cosine": cosine_betas, "linear": linear_betas}


def space_timesteps(num_timesteps: int, section_counts: int | str | list[int]) -> list[int]:
    """The retained timesteps when respacing (IDDPM ``space_timesteps``): evenly strided per section, rounded."""
    if isinstance(section_counts, str):
        section_counts = [int(x) for x in section_counts.split(",")] if section_counts else [num_timesteps]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count or count < 1:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def _normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(μ1, e^{lv1}) || N(μ2, e^{lv2})), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of a Gaussian discretised to 256 bins on [-1, 1] (DDPM §3.3 decoder, as IDDPM's code)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class GaussianDiffusion:
    """A (possibly respaced) cosine-schedule diffusion with learned-range variance and ε prediction.

    ``timestep_map[i]`` is the original (0…T−1) timestep of respaced index ``i``; the network always sees
    original timesteps. Coefficients are computed in float64 and applied in the input's dtype (float32),
    like the official ``_extract_into_tensor``.
    """

    def __init__(self, num_sampling_steps: int | str | None = None, num_train_timesteps: int = 1000,
                 noise_schedule: str = "cosine") -> None:
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"unknown noise_schedule {noise_schedule!r}; choose {', '.join(NOISE_SCHEDULES)}")
        base = NOISE_SCHEDULES[noise_schedule](num_train_timesteps)
        base_ac = np.cumprod(1.0 - base)
        use = space_timesteps(num_train_timesteps, num_sampling_steps or num_train_timesteps)
        last, betas = 1.0, []
        for i in use:  # respacing: new β_i = 1 − ᾱ_i/ᾱ_prev (IDDPM SpacedDiffusion)
            betas.append(1 - base_ac[i] / last)
            last = base_ac[i]
        self.timestep_map = list(use)
        self.num_train_timesteps = num_train_timesteps
        b = np.array(betas, dtype=np.float64)
        self.betas = b
        self.num_timesteps = len(b)
        ac = np.cumprod(1.0 - b)
        ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod = ac
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        self._np = {
            "sqrt_ac": np.sqrt(ac),
            "sqrt_1m_ac": np.sqrt(1.0 - ac),
            "sqrt_recip_ac": np.sqrt(1.0 / ac),
            "sqrt_recipm1_ac": np.sqrt(1.0 / ac - 1),
            "post_logvar_clipped": (np.log(np.append(post_var[1], post_var[1:])) if len(b) > 1
                                    else np.log(np.maximum(post_var, 1e-20))),
            "post_coef1": b * np.sqrt(ac_prev) / (1.0 - ac),
            "post_coef2": (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac),
            "log_betas": np.log(b),
            "timestep_map": np.array(self.timestep_map, dtype=np.int64),
        }
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}

    def _t(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = (str(device),)
        if key not in self._cache:
            self._cache[key] = {k: torch.from_numpy(v).to(device=device, dtype=torch.int64 if v.dtype == np.int64 else torch.float32)
                                for k, v in self._np.items()}
        return self._cache[key]

    # ---- forward process --------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (DDPM eq. 4)."""
        c = self._t(x0.device)
        return c["sqrt_ac"][t][:, None] * x0 + c["sqrt_1m_ac"][t][:, None] * noise

    def p_mean_logvar(self, model_out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ_θ(x_t, t) and log σ²_θ from the network's (N, 2C) output (IDDPM eqs. 11–15); ``t`` respaced indices."""
        c = self._t(x.device)
        ch = x.shape[1]
        eps, v = model_out[:, :ch].float(), model_out[:, ch:].float()
        frac = (v + 1) / 2
        logvar = frac * c["log_betas"][t][:, None] + (1 - frac) * c["post_logvar_clipped"][t][:, None]
        x0 = c["sqrt_recip_ac"][t][:, None] * x - c["sqrt_recipm1_ac"][t][:, None] * eps
        mean = c["post_coef1"][t][:, None] * x0 + c["post_coef2"][t][:, None] * x
        return mean, logvar

    # ---- training ---------------------------------------------------------------------------
    def training_losses(self, net: Callable[..., torch.Tensor], x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Per-row loss MSE(ε, ε_θ) + L_vlb (bits, mean frozen), IDDPM's ``LossType.MSE`` with learned range."""
        x_t = self.q_sample(x0, t, noise)
        out = net(x_t, torch.as_tensor(self._t(x0.device)["timestep_map"])[t], c)
        ch = x0.shape[1]
        eps = out[:, :ch]
        frozen = torch.cat([eps.detach(), out[:, ch:]], dim=1)
        mean, logvar = self.p_mean_logvar(frozen, x_t, t)
        cc = self._t(x0.device)
        true_mean = cc["post_coef1"][t][:, None] * x0 + cc["post_coef2"][t][:, None] * x_t
        true_logvar = cc["post_logvar_clipped"][t][:, None]
        kl = _normal_kl(true_mean, true_logvar, mean, logvar).mean(dim=1) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).mean(dim=1) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        mse = ((noise - eps.float()) ** 2).mean(dim=1)
        return mse + vb

    # ---- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, net: "SimpleMLPAdaLN", z: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor | None = None,
               temperature: float = 1.0, cfg: float | torch.Tensor = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reverse process from ``noise`` (N, C) to x_0 (IDDPM ``p_sample_loop`` with MAR's temperature).

        ``z``: (N, Z) conditions, or (2N, Z) = [conditional; unconditional] when guiding (``cfg`` ≠ 1):
        ε̂ = ε_u + cfg·(ε_c − ε_u) with the conditional half's variance, as MAR's ``forward_with_cfg``.
        ``step_noise``: (num_timesteps, N, C) noise for each reverse step (index ``i`` = respaced step ``i``;
        index 0, the last step, is unused); drawn from ``generator`` when omitted.
        """
        guided = z.shape[0] == 2 * noise.shape[0]
        if not guided and z.shape[0] != noise.shape[0]:
            raise ValueError(f"{z.shape[0]} conditions for {noise.shape[0]} tokens")
        c = self._t(noise.device)
        a = self._np
        c_emb = net.embed_condition(z)
        x = noise.float()
        n, ch = x.shape
        rows = z.shape[0]
        for i in reversed(range(self.num_timesteps)):
            # time_embed on one row per token like the official loop: a matmul's rounding depends on its row
            # count, so a shared (1, W) embedding would drift from the official samples by float noise.
            t_emb = net.time_embed(c["timestep_map"][i].expand(rows))
            if guided:
                out = net.forward_with_embeddings(torch.cat([x, x]).to(c_emb.dtype), t_emb, c_emb)
                eps_c, eps_u = out[:n, :ch].float(), out[n:, :ch].float()
                eps = eps_u + cfg * (eps_c - eps_u)
                v = out[:n, ch:].float()
            else:
                out = net.forward_with_embeddings(x.to(c_emb.dtype), t_emb, c_emb).float()
                eps, v = out[:, :ch], out[:, ch:]
            # μ_θ and learned-range log σ² (IDDPM eqs. 11-15) with this step's scalars
            x0 = float(a["sqrt_recip_ac"][i]) * x - float(a["sqrt_recipm1_ac"][i]) * eps
            mean = float(a["post_coef1"][i]) * x0 + float(a["post_coef2"][i]) * x
            if i > 0:
                frac = (v + 1) / 2
                logvar = frac * float(a["log_betas"][i]) + (1 - frac) * float(a["post_logvar_clipped"][i])
                nz = step_noise[i] if step_noise is not None else torch.randn(
                    x.shape, generator=generator, device=generator.device if generator is not None else x.device).to(x.device)
                x = mean + torch.exp(0.5 * logvar) * nz.float() * temperature
            else:
                x = mean
        return x


class HeadPlan:
    """The head's reverse process prepared once for a sampling call: the same arithmetic as
    :meth:`GaussianDiffusion.sample` (IDDPM eqs. 11-15, MAR's temperature and CFG) with the work that does not
    change the result beyond float rounding removed (docs/ARCHITECTURE.md, "Sampling speed"):

    * ``time_embed`` of the ``S`` respaced timesteps once per plan, one row per step shared by all token rows
      (the official loop embeds the same t once per row at every step);
    * ``cond_embed(z)`` once per MAR step; the CFG halves in one batch; ``input_proj`` once for both halves
      (they see the same x);
    * the seven adaLN modulations (six blocks + final layer) as ONE matmul: they all read ``SiLU(t_emb + c_emb)``,
      so their weights are concatenated once per plan (``1 + scale`` folded into the bias);
    * μ = A_i·x − B_i·ε and σ = exp(E_i + F_i·v) with per-step scalars folded in float64;
    * no per-step re-allocation of the modulation buffer, no host synchronisation.

    With bf16/fp16 weights only the matmuls run in that dtype: the residual stream, LayerNorms, the timestep
    table, the output layer and all diffusion arithmetic stay float32; the result is float32.
    ``compile=True`` runs the per-step network through ``torch.compile`` (dynamic shapes).
    """

    def __init__(self, net: "SimpleMLPAdaLN", diffusion: "GaussianDiffusion", compile: bool | str = False) -> None:
        w = net.model_channels
        self.net, self.width, self.depth = net, w, len(net.res_blocks)
        self.cdt = net.res_blocks[0].mlp[0].weight.dtype if self.depth else net.input_proj.weight.dtype
        dev = net.input_proj.weight.device
        with torch.no_grad():
            lins = [b.adaLN_modulation[-1] for b in net.res_blocks] + [net.final_layer.adaLN_modulation[-1]]
            self.ada_w_t = torch.cat([lin.weight for lin in lins]).to(self.cdt).t()  # (W, 3W·D + 2W)
            bias = torch.cat([lin.bias for lin in lins]).to(torch.float64)
            for k in range(self.depth + 1):  # scale segments: x·(1 + scale) + shift
                o = 3 * w * k + w
                bias[o:o + w] += 1.0
            self.ada_b = bias.to(self.cdt)
            self.ln = [(b.in_ln.weight.float(), b.in_ln.bias.float()) for b in net.res_blocks]
            self.mlp = [(b.mlp[0].weight, b.mlp[0].bias, b.mlp[2].weight, b.mlp[2].bias) for b in net.res_blocks]
            ts = torch.as_tensor(diffusion.timestep_map, dtype=torch.long, device=dev)
            self.t_emb = net.time_embed(ts).float()  # (S, W)
        a = diffusion._np
        c1, c2 = a["post_coef1"], a["post_coef2"]
        lb, lp = a["log_betas"], a["post_logvar_clipped"]
        self.A = (c1 * a["sqrt_recip_ac"] + c2).tolist()
        self.B = (c1 * a["sqrt_recipm1_ac"]).tolist()
        self.E = (0.25 * (lb + lp)).tolist()
        self.F = (0.25 * (lb - lp)).tolist()
        self.num_timesteps = diffusion.num_timesteps
        self.eps_v: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self._eps_v
        if compile:
            self.eps_v = torch.compile(self._eps_v, dynamic=True, mode=compile if isinstance(compile, str) else None)
        self.compiled = bool(compile)

    def _eps_v(self, x: torch.Tensor, t_emb: torch.Tensor, c_emb: torch.Tensor, cfg: float | torch.Tensor,
               buf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided ε, v) for the state x (N, C) given t_emb (W,) and c_emb (N or 2N, W), all float32."""
        net, w, cdt = self.net, self.width, self.cdt
        n, ch = x.shape
        rows = c_emb.shape[0]
        s = F.silu(c_emb + t_emb).to(cdt)
        mods = torch.addmm(self.ada_b, s, self.ada_w_t, out=buf) if buf is not None else torch.addmm(self.ada_b, s, self.ada_w_t)
        mods = mods.float()
        h = F.linear(x.to(net.input_proj.weight.dtype), net.input_proj.weight, net.input_proj.bias).float()
        if rows != n:
            h = torch.cat([h, h])
        for k in range(self.depth):
            o = 3 * w * k
            ln_w, ln_b = self.ln[k]
            w0, b0, w2, b2 = self.mlp[k]
            hn = torch.addcmul(mods[:, o:o + w], F.layer_norm(h, (w,), ln_w, ln_b, 1e-6), mods[:, o + w:o + 2 * w])
            m = F.linear(F.silu(F.linear(hn.to(cdt), w0, b0)), w2, b2).float()
            h = torch.addcmul(h, mods[:, o + 2 * w:o + 3 * w], m)
        o = 3 * w * self.depth
        hn = torch.addcmul(mods[:, o:o + w], F.layer_norm(h, (w,), None, None, 1e-6), mods[:, o + w:o + 2 * w])
        fin = net.final_layer.linear
        out = F.linear(hn.to(fin.weight.dtype), fin.weight, fin.bias).float()
        if rows != n:
            eps_c, eps_u = out[:n, :ch], out[n:, :ch]
            return eps_u + cfg * (eps_c - eps_u), out[:n, ch:]
        return out[:, :ch], out[:, ch:]

    @torch.no_grad()
    def sample(self, z: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor | None = None,
               temperature: float = 1.0, cfg: float | torch.Tensor = 1.0, generator: torch.Generator | None = None,
               stats: dict[str, int] | None = None) -> torch.Tensor:
        """Reverse process from ``noise`` (N, C) to x_0 (N, C) float32; arguments as :meth:`GaussianDiffusion.sample`."""
        n = noise.shape[0]
        guided = z.shape[0] == 2 * n
        if not guided and z.shape[0] != n:
            raise ValueError(f"{z.shape[0]} conditions for {n} tokens")
        sd = _state_dtype(noise)
        net = self.net
        c_emb = F.linear(z.to(net.cond_embed.weight.dtype), net.cond_embed.weight, net.cond_embed.bias).to(sd)
        t_emb = self.t_emb.to(sd)
        x = noise.to(sd)
        if isinstance(cfg, torch.Tensor):
            cfg = cfg.to(sd)
        buf = None
        if not self.compiled:
            buf = torch.empty(c_emb.shape[0], self.ada_w_t.shape[1], dtype=self.cdt, device=x.device)
        for i in reversed(range(self.num_timesteps)):
            eps, v = self.eps_v(x, t_emb[i], c_emb, cfg, buf)
            mean = self.A[i] * x - self.B[i] * eps
            if i > 0:
                nz = step_noise[i] if step_noise is not None else torch.randn(
                    x.shape, generator=generator, device=generator.device if generator is not None else x.device).to(x.device)
                std = torch.exp(self.F[i] * v + self.E[i])
                x = torch.addcmul(mean, std, nz.to(sd), value=temperature)
            else:
                x = mean
        if stats is not None:
            stats["head_rows"] = stats.get("head_rows", 0) + c_emb.shape[0] * self.num_timesteps
        return x


def _fingerprint(module: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())


class DiffLoss(nn.Module):
    """The diffusion-loss head: ``net`` (SimpleMLPAdaLN) + training and sampling diffusions (MAR ``DiffLoss``)."""

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int,
                 num_sampling_steps: int | str = 100, grad_checkpointing: bool = False, noise_schedule: str = "cosine") -> None:
        super().__init__()
        self.in_channels = target_channels
        self.noise_schedule = noise_schedule
        self.net = SimpleMLPAdaLN(target_channels, width, target_channels * 2, z_channels, depth, grad_checkpointing)
        self.train_diffusion = GaussianDiffusion(None, noise_schedule=noise_schedule)
        self.num_sampling_steps = int(num_sampling_steps)
        self._gen: dict[int, GaussianDiffusion] = {}
        self._plans: dict[tuple, tuple[tuple, HeadPlan]] = {}

    def gen_diffusion(self, steps: int | None = None) -> GaussianDiffusion:
        """The respaced sampling diffusion with ``steps`` (default: the configured ``num_sampling_steps``)."""
        steps = int(steps or self.num_sampling_steps)
        if steps not in self._gen:
            self._gen[steps] = GaussianDiffusion(steps, noise_schedule=self.noise_schedule)
        return self._gen[steps]

    def forward(self, target: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Masked mean of the per-token loss; t ~ U{0…999}, ε ~ N(0, I) from ``generator``."""
        gdev = generator.device if generator is not None else target.device
        t = torch.randint(0, self.train_diffusion.num_timesteps, (target.shape[0],), generator=generator, device=gdev).to(target.device)
        noise = torch.randn(target.shape, generator=generator, device=gdev).to(target.device)
        loss = self.train_diffusion.training_losses(self.net, target.float(), t, noise, z)
        if mask is not None:
            return (loss * mask).sum() / mask.sum()
        return loss.mean()

    def plan(self, steps: int | None = None, compile: bool | str = False) -> HeadPlan:
        """The prepared sampling loop for ``steps`` head steps (:class:`HeadPlan`), cached until a weight changes
        (new tensor, dtype, device or an in-place update)."""
        steps = int(steps or self.num_sampling_steps)
        key = (steps, compile)
        fp = _fingerprint(self.net)
        cached = self._plans.get(key)
        if cached is None or cached[0] != fp:
            self._plans = {k: v for k, v in self._plans.items() if v[0] == fp}
            cached = self._plans[key] = (fp, HeadPlan(self.net, self.gen_diffusion(steps), compile))
        return cached[1]

    def sample(self, z: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor | None = None,
               temperature: float = 1.0, cfg: float | torch.Tensor = 1.0, steps: int | None = None,
               generator: torch.Generator | None = None, compile: bool | str = False) -> torch.Tensor:
        """Sample tokens (N, C) for conditions z (N or 2N, Z) through :meth:`plan` (float32 result);
        :meth:`GaussianDiffusion.sample` is the step-by-step reference (bit-identical to the official loop)."""
        return self.plan(steps, compile).sample(z, noise, step_noise, temperature, cfg, generator)
