"""MAR sampling: masked generation in a random order with a cosine schedule and a diffusion head per token.

Li et al. 2024, "Autoregressive Image Generation without Vector Quantization", §3.4 ("Masked
autoregressive models") and §3.3 (temperature), as the official ``MAR.sample_tokens`` (LTH14/mar):

* a random generation order per sample; all L tokens start masked;
* at step k of K the number still masked afterwards is ⌊L·cos(π/2·(k+1)/K)⌋ (MaskGIT's cosine schedule,
  Chang et al. 2022, eq. 3), clamped to [1, (masked now) − 1] so every step predicts at least one token;
  the last step predicts all remaining tokens;
* the transformer gives per-token conditions z (:meth:`mgen.models.mar.MAR.condition`) and the
  diffusion head samples the tokens to predict (reverse diffusion with ``head_steps`` respaced steps and
  noise scaled by ``temperature``);
* classifier-free guidance (Ho & Salimans 2022) on the head's ε with the conditional and unconditional
  (``fake_latent``) halves in one batch; scale ``1 + (cfg − 1)·(L − n_masked_next)/L`` for the ``"linear"``
  schedule (Muse, Chang et al. 2023) or ``cfg`` for ``"constant"``.

Randomness: every sample draws its order and its head noise from its own generator
(:func:`mgen.samplers.per_sample_generators`), so sample *i* is the same whatever the batch size.
"""

from __future__ import annotations

import math
import time
import weakref
from typing import Any, Callable, Sequence

import torch

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators

CFG_SCHEDULES = ("linear", "constant")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: compiled ``model.condition`` per model and compile mode (kept off the module so that deepcopy/pickle work)
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str | None, Any]]" = weakref.WeakKeyDictionary()


def mask_schedule(seq_len: int, num_steps: int) -> list[tuple[int, int, float]]:
    """For each step k: (tokens predicted at k, tokens still masked after k, ``mask_len`` used by the linear CFG).

    Mirrors the official arithmetic: ``mask_len = max(1, min(masked − 1, ⌊L·cos(π/2·(k+1)/K)⌋))`` and the
    last step predicts everything that is left.
    """
    out, masked = [], seq_len
    for k in range(num_steps):
        mask_len = max(1, min(masked - 1, math.floor(seq_len * math.cos(math.pi / 2 * (k + 1) / num_steps))))
        if k >= num_steps - 1:
            out.append((masked, 0, float(mask_len)))
            masked = 0
        else:
            n_pred = masked - mask_len
            out.append((n_pred, mask_len, float(mask_len)))
            masked = mask_len
    return out


def _compile_available() -> str | None:
    """None if ``torch.compile`` (inductor) can run here, else the reason in a few words."""
    try:
        import torch._inductor  # noqa: F401
    except Exception as e:  # a torch build without inductor
        return f"torch.compile's inductor backend cannot be imported ({type(e).__name__})"
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    import shutil

    if not torch.cuda.is_available() and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "the CPU inductor backend needs a C++ compiler (g++ / clang++), none is on PATH"
    return None


class MARSampler:
    """MAR's iterative sampler. ``sample(model, labels, generator=g)`` → scaled latents (B, C, H, W), float32
    (float64 for a float64 model).

    The model may be float32 (exact mode: the official arithmetic up to float rounding, see
    :meth:`mgen.models.diffloss.HeadPlan`) or cast to bf16/fp16 (``model.to(torch.bfloat16)``: matmuls in that
    dtype, tokens, orders, the head's diffusion arithmetic and the returned latents float32).
    ``compile=True`` runs the transformer and the head's step function through ``torch.compile`` (dynamic
    shapes); a string picks torch.compile's mode (``"reduce-overhead"``: CUDA graphs for the fixed-shape head
    loop of each step on GPU). Refused with a :class:`~mgen.errors.UserError` where no backend can run.
    """

    def __init__(self, num_steps: int = 64, cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0,
                 head_steps: int = 100, progress: bool = False, compile: bool | str = False) -> None:
        if int(num_steps) != num_steps or num_steps < 1:
            raise UserError(f"num_steps must be a positive integer, got {num_steps}")
        if cfg < 0:
            raise UserError(f"guidance scale (cfg) must be >= 0, got {cfg}")
        if cfg_schedule not in CFG_SCHEDULES:
            raise UserError(f"unknown cfg_schedule {cfg_schedule!r}; choose {' or '.join(CFG_SCHEDULES)}")
        if temperature <= 0:
            raise UserError(f"temperature must be > 0, got {temperature}")
        if int(head_steps) != head_steps or not 1 <= head_steps <= 1000:
            raise UserError(f"head_steps must be an integer in 1..1000, got {head_steps}")
        if isinstance(compile, str) and compile not in COMPILE_MODES:
            raise UserError(f"compile mode {compile!r}: choose one of {', '.join(COMPILE_MODES)} (or True)")
        if compile:
            why = _compile_available()
            if why is not None:
                raise UserError(f"compile=True: {why}; run without --compile")
        self.num_steps = int(num_steps)
        self.cfg = float(cfg)
        self.cfg_schedule = cfg_schedule
        self.temperature = float(temperature)
        self.head_steps = int(head_steps)
        self.progress = progress  # accepted for old callers; pipelines show progress through ``callback``
        self.compile: bool | str = compile if isinstance(compile, str) else bool(compile)
        self.timings: dict[str, float] = {}

    def __repr__(self) -> str:
        return (f"MARSampler(num_steps={self.num_steps}, cfg={self.cfg}, cfg_schedule={self.cfg_schedule!r}, "
                f"temperature={self.temperature}, head_steps={self.head_steps}"
                + (", compile=True" if self.compile else "") + ")")

    @property
    def total_steps(self) -> int:
        """How many times ``callback`` is called by :meth:`sample` (once per step, skipped steps included)."""
        return self.num_steps

    # -- randomness (overridable, e.g. to replay the official code's draws in a parity check) ----------
    def orders(self, gens: Sequence[torch.Generator], seq_len: int, device: torch.device) -> torch.Tensor:
        """(B, L) random generation orders, one permutation per sample from its own generator."""
        return torch.stack([torch.randperm(seq_len, generator=g, device=g.device).to(device) for g in gens])

    def head_noise(self, gens: Sequence[torch.Generator], n: int, channels: int, steps: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial noise (B·n, C) and per-reverse-step noise (steps, B·n, C), sample-major like the token rows."""
        init, per_step = [], []
        for g in gens:
            draw = torch.randn(steps + 1, n, channels, generator=g, device=g.device).to(device)
            init.append(draw[0])
            per_step.append(draw[1:])
        return torch.cat(init), torch.cat(per_step, dim=1)

    def _compiled_condition(self, model: torch.nn.Module) -> Any:
        cache = _COMPILED.setdefault(model, {})
        mode = self.compile if isinstance(self.compile, str) else None
        if mode not in cache:
            cache[mode] = torch.compile(model.condition, dynamic=True, mode=mode)
        return cache[mode]

    # -- main loop ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model: torch.nn.Module, labels: torch.Tensor | Sequence[int] | None, generator: torch.Generator | None = None,
               batch_size: int | None = None, progress: bool | None = None, profile: bool = False,
               hooks: Any = None, callback: Callable[[int, float, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None] | None = None
               ) -> torch.Tensor:
        """Generate scaled latents for ``labels`` (B,) (None: unconditional, then pass ``batch_size``).

        Returns what the official ``sample_tokens`` returns: (B, vae_embed_dim, H, W), to be divided by
        the tokenizer's scaling factor before ``decode``. ``profile=True`` fills ``self.timings`` with
        seconds spent in the transformer and in the diffusion head (synchronising the device).

        ``callback(step, timestep, {"tokens": (B, L, C), "mask": (B, L) bool, True = still masked})`` is called
        after every step (``timestep``: the fraction of tokens still masked); a returned ``"tokens"`` tensor
        replaces the tokens (the mask follows the generation order and cannot be replaced).

        ``hooks`` (optional; used by :class:`mgen.samplers.recap.ReCAP`) may replace, per step, the
        transformer call — ``hooks.condition_fn(model, step, rank)`` returns a callable with
        ``model.condition``'s signature — and the head's step count — ``hooks.head_steps(step, head_steps)``.
        """
        param = next(model.parameters())
        device = param.device
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(device)
            bsz = labels.shape[0]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= model.num_classes):
                raise UserError(f"class labels must be in 0..{model.num_classes - 1}")
        else:
            if batch_size is None:
                raise UserError("pass labels or batch_size")
            bsz = int(batch_size)
        L, C = model.seq_len, model.token_embed_dim
        work = torch.float64 if any(p.dtype == torch.float64 for p in (param,)) else torch.float32
        gens = per_sample_generators(generator, bsz, device)
        orders = self.orders(gens, L, device)
        # rank[b, pos] = place of pos in the order; as the official mask_by_order, the tokens still masked after a
        # step are the first `masked` ones of the order, so the order's tail is generated first.
        rank = torch.empty_like(orders)
        rank.scatter_(1, orders, torch.arange(L, device=device).expand(bsz, L))
        positions = torch.arange(L, device=device).expand(bsz, L)
        tokens = torch.zeros(bsz, L, C, device=device, dtype=work)
        guided = self.cfg != 1.0
        if guided:
            lab2 = torch.cat([labels, labels]) if labels is not None else None
            drop = torch.cat([torch.zeros(bsz, dtype=torch.bool), torch.ones(bsz, dtype=torch.bool)]).to(device)
        self.timings = {"transformer_s": 0.0, "head_s": 0.0, "steps": 0}
        sync = (lambda: torch.cuda.synchronize(device)) if (profile and device.type == "cuda") else (lambda: None)
        schedule = mask_schedule(L, self.num_steps)
        diffloss = model.diffloss
        fast = hooks is None and callable(getattr(model, "forward_mae_decoder", None))
        condition_fast = self._compiled_condition(model) if (self.compile and fast) else model.condition
        masked_now = L
        for step in range(self.num_steps):
            n_pred, masked_next, mask_len = schedule[step]
            if n_pred == 0:
                if callback is not None:
                    self._callback(callback, step, masked_now / L, tokens, rank < masked_now)
                continue
            mask = rank < masked_now
            to_pred = mask & (rank >= masked_next)
            t0 = time.perf_counter()
            head_steps = self.head_steps if hooks is None else hooks.head_steps(step, self.head_steps)
            if fast:
                # the positions predicted now, ascending per row (as boolean indexing orders them), no host sync
                query = torch.where(to_pred, positions, L).sort(dim=1).values[:, :n_pred]
                if guided:
                    z = condition_fast(torch.cat([tokens, tokens]), torch.cat([mask, mask]), lab2, drop,
                                       query=torch.cat([query, query]))
                    z = torch.cat([z[:bsz].reshape(bsz * n_pred, -1), z[bsz:].reshape(bsz * n_pred, -1)])
                else:
                    z = condition_fast(tokens, mask, labels, query=query).reshape(bsz * n_pred, -1)
            else:
                condition = model.condition if hooks is None else hooks.condition_fn(model, step, rank)
                if guided:
                    z = condition(torch.cat([tokens, tokens]), torch.cat([mask, mask]), lab2, drop)
                    z = torch.cat([z[:bsz][to_pred], z[bsz:][to_pred]])
                else:
                    z = condition(tokens, mask, labels)[to_pred]
            sync()
            t1 = time.perf_counter()
            if self.cfg_schedule == "linear":
                # float32 arithmetic in the official order (its mask_len is a float32 tensor), so that the
                # guidance scale matches the official one to the last bit
                ml = torch.tensor([mask_len], dtype=torch.float32, device=device)
                cfg_iter = 1 + (self.cfg - 1) * (L - ml) / L
            else:
                cfg_iter = self.cfg
            noise, step_noise = self.head_noise(gens, n_pred, C, diffloss.gen_diffusion(head_steps).num_timesteps, device)
            kw = {"compile": self.compile} if self.compile else {}
            new = diffloss.sample(z, noise, step_noise, self.temperature, cfg_iter if guided else 1.0, head_steps, **kw)
            if fast:
                tokens.scatter_(1, query[..., None].expand(-1, -1, C), new.reshape(bsz, n_pred, C).to(tokens.dtype))
            else:
                tokens[to_pred] = new.to(tokens.dtype)
            sync()
            t2 = time.perf_counter()
            self.timings["transformer_s"] += t1 - t0
            self.timings["head_s"] += t2 - t1
            self.timings["steps"] += 1
            masked_now = masked_next
            if callback is not None:
                tokens = self._callback(callback, step, masked_now / L, tokens, rank < masked_now)
        return model.unpatchify(tokens)

    @staticmethod
    def _callback(callback: Callable[..., Any], step: int, timestep: float, tokens: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
        out = callback(step, timestep, {"tokens": tokens, "mask": mask})
        if not out:
            return tokens
        if "mask" in out and not torch.equal(torch.as_tensor(out["mask"]).to(mask.device).bool(), mask):
            raise UserError("MAR's callback cannot change the mask: it follows the generation order")
        if "tokens" in out:
            new = torch.as_tensor(out["tokens"]).to(tokens.device, tokens.dtype)
            if new.shape != tokens.shape:
                raise UserError(f"callback returned tokens of shape {tuple(new.shape)}, expected {tuple(tokens.shape)}")
            return new.clone()
        return tokens

    def settings(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "cfg": self.cfg, "cfg_schedule": self.cfg_schedule,
                "temperature": self.temperature, "head_steps": self.head_steps}
