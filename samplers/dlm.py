"""Samplers for masked diffusion language models: LLaDA's, Dream's, and exact one-token-per-forward decoding.

A text generator here is any module whose ``forward(input_ids, attention_mask)`` returns *position-aligned*
logits (B, N, V) and that exposes ``mask_id`` / ``eos_id`` / ``pad_id`` (``mgen.models.dlm`` and the
adapters in ``mgen.models.dlm_adapters``, which undo Dream's one-position shift).

- :class:`LLaDASampler` — Nie et al. 2025, "Large Language Diffusion Models", Appendix B (Algorithms 4/5)
  and the official ``generate.py`` (github.com/ML-GSAI/LLaDA): semi-autoregressive blocks, an equal share of
  the steps per block, each block's masks spread evenly over its steps (``get_num_transfer_tokens``:
  base = n // steps, the first n % steps steps get one more), Gumbel-max sampling in float64
  (``exp(logits) / (−log u)^temperature``), remasking by ``low_confidence`` (probability of the chosen token)
  or ``random``, classifier-free guidance with the prompt masked in the unconditional pass:
  ``un + (scale + 1)·(cond − un)``.
- :class:`DreamSampler` — Ye et al. 2025, "Dream 7B", official ``generation_utils.py`` (github.com/HKUNLP/Dream):
  time grid linspace(1, ε, steps+1), ``int(n_mask·(1 − s/t))`` tokens at step t→s and all the rest at the last
  step; ``alg`` = ``origin`` (each mask unmasked with probability 1 − s/t), ``maskgit_plus`` (probability of
  the sampled token), ``topk_margin`` (top-1 − top-2 probability), ``entropy`` (negative entropy); ``alg_temp``
  samples the positions from softmax(confidence / alg_temp) instead of taking the top ones; top-p / top-k.
- :class:`ExactSampler` — one token per full forward (the "true joint" that Bansal et al. 2025, "Enabling
  Approximate Joint Sampling in Diffusion LMs", compare against): each step unmasks the single position with
  the lowest entropy (or a random one / left to right) and samples it from its exact conditional.

Randomness: every draw for sample *i* comes from its own generator (:func:`per_sample_generators`), so a
sample is the same whatever the batch it is in. Prompts of different lengths are left-padded with the pad
id and hidden by the attention mask; RoPE positions start at each row's first real token.

Precision: the model may run in bfloat16 / float16 (``model.to(torch.bfloat16)``); its logits are cast to
float32 before any softmax, Gumbel noise (float64, as LLaDA), entropy or confidence ranking, so the decoding
arithmetic is the same whatever the model's dtype. Sequences are int64.

Step callback (docs/ARCHITECTURE.md, "Samplers"): ``callback(step, timestep, {"x": ids})`` after every decoding
step, ``step`` 0-based, ``timestep`` the fraction of the decoding still ahead (1 → 0; Dream: its time s); a
returned ``{"x": ids}`` replaces the sequence (diffusers' ``callback_on_step_end``). ``sampler.total_steps`` is
the number of calls when nothing stops early (EOS stopping, or nothing left to unmask, may end sooner).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators

REMASKING = ("low_confidence", "random")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
EOS_MODES = ("none", "stop", "pad")
StepCallback = Callable[[int, float, dict[str, torch.Tensor]], "Mapping[str, torch.Tensor] | None"]


def run_callback(callback: StepCallback | None, step: int, timestep: float, x: torch.Tensor) -> torch.Tensor:
    """Call ``callback(step, timestep, {"x": x})``; a returned ``{"x": ids}`` (same shape) replaces ``x``."""
    if callback is None:
        return x
    out = callback(step, float(timestep), {"x": x})
    if out is not None and out.get("x") is not None:
        new = out["x"]
        if tuple(new.shape) != tuple(x.shape):
            raise UserError(f"the step callback returned x of shape {tuple(new.shape)}, expected {tuple(x.shape)}")
        return new.to(device=x.device, dtype=x.dtype)
    return x


# -- shared pieces -------------------------------------------------------------------------------------------
def prepare_prompts(prompts: Sequence[Sequence[int]] | torch.Tensor, gen_length: int, mask_id: int, pad_id: int,
                    device: torch.device | str = "cpu", require_prompt: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-pad prompts, append ``gen_length`` masks: (x, attention_mask, P) with generation at columns P:."""
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim == 1:
            prompts = prompts[None]
        rows = [r.tolist() for r in prompts]
    else:
        rows = [list(map(int, r)) for r in prompts]
    if not rows:
        raise UserError("no prompts given")
    if require_prompt and any(len(r) == 0 for r in rows):
        raise UserError("an empty prompt was given where one is required (classifier-free guidance masks the prompt)")
    p = max(len(r) for r in rows)
    b = len(rows)
    x = torch.full((b, p + gen_length), mask_id, dtype=torch.long)
    attn = torch.ones(b, p + gen_length, dtype=torch.long)
    for i, r in enumerate(rows):
        if any(t == mask_id for t in r):
            raise UserError("a prompt contains the mask token")
        x[i, : p - len(r)] = pad_id
        attn[i, : p - len(r)] = 0
        x[i, p - len(r): p] = torch.tensor(r, dtype=torch.long)
    return x.to(device), attn.to(device), p


def model_logits(model: torch.nn.Module, x: torch.Tensor, attn: torch.Tensor | None,
                 forbid_mask: bool = False) -> torch.Tensor:
    """The model's aligned logits, as LLaDA's / Dream's own samplers see them (``forbid_mask``: mask logit → min).

    Returned in float32 whatever the model's dtype (the sampling arithmetic stays float32).
    The attention mask is dropped when nothing is padded (faster attention path). mgen's own model already
    gives the mask token no probability (MDLM's SUBS, :meth:`mgen.models.dlm.MaskedDiffusionLM.head`);
    adapters of real checkpoints return their logits untouched, exactly what the official code samples from.
    The exact and joint samplers pass ``forbid_mask=True`` so that a decoded position never stays masked.
    """
    if attn is not None and bool(attn.all()):
        attn = None
    out = model(x, attention_mask=attn)
    logits = (out.logits if hasattr(out, "logits") else out).float()
    if forbid_mask:
        logits = logits.index_fill(-1, torch.tensor([model.mask_id], device=logits.device),
                                   torch.finfo(logits.dtype).min)  # finite: differences stay defined
    return logits


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """LLaDA's Gumbel-max in float64: exp(l) / (−log u)^T, whose argmax is a sample of softmax(l / T)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=generator.device).to(logits.device)
    return logits.exp() / (-torch.log(u)) ** temperature


def get_num_transfer_tokens(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """(B,) masked counts → (B, steps) tokens to unmask per step: n // steps each, +1 on the first n % steps."""
    base = mask_count // steps
    rem = mask_count % steps
    out = base[:, None].expand(-1, steps).clone()
    out += (torch.arange(steps, device=mask_count.device)[None] < rem[:, None]).long()
    return out


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Dream's ``top_p_logits`` then ``top_k_logits``: logits outside the smallest set with cumulative probability
    ≥ top_p, then outside the top-k, set to the dtype's minimum (as Dream's generation_utils.py)."""
    low = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        sorted_logits, idx = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(-1, idx, remove), low)
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, low)
    return logits


def apply_eos(x: torch.Tensor, start: int, end: int, eos_id: int, mode: str, fill_id: int) -> torch.Tensor:
    """Rows (B,) that hold an EOS in the decoded range [start, end): fill everything after it with ``fill_id``."""
    region = x[:, start:end]
    is_eos = region == eos_id
    done = is_eos.any(1)
    if mode == "none" or not bool(done.any()):
        return done
    after = (is_eos.long().cumsum(1) > 0) & ~(is_eos & (is_eos.long().cumsum(1) == 1))
    region[after] = fill_id
    x[done, end:] = fill_id
    return done


def _check_common(steps: int, gen_length: int, block_length: int | None, temperature: float, eos: str) -> None:
    if not isinstance(gen_length, int) or gen_length < 1:
        raise UserError(f"gen_length must be a positive integer (got {gen_length!r})")
    if not isinstance(steps, int) or steps < 1 or steps > gen_length:
        raise UserError(f"steps must be between 1 and gen_length={gen_length} (got {steps!r})")
    if block_length is not None:
        if block_length < 1 or gen_length % block_length:
            raise UserError(f"gen_length {gen_length} is not divisible by block_length {block_length}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0 (got {temperature})")
    if eos not in EOS_MODES:
        raise UserError(f"unknown EOS handling {eos!r}; choose from {', '.join(EOS_MODES)}")


@dataclass
class SampleStats:
    full_forwards: int = 0
    sampler_passes: int = 0
    tokens: int = 0


# -- LLaDA -------------------------------------------------------------------------------------------------
@dataclass
class LLaDASampler:
    """LLaDA's block-wise semi-autoregressive low-confidence remasking sampler (see module docstring)."""

    steps: int = 128
    gen_length: int = 128
    block_length: int | None = None  # None: one block of gen_length (generate.py: 128 = gen_length)
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    mask_id: int | None = None  # None: the model's (generate.py's default 126336 is LLaDA-8B's)
    eos: str = "none"  # "stop": after EOS fill with EOS and stop once every row ended; "pad": fill with pad
    stats: SampleStats = field(default_factory=SampleStats, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.block_length is None and isinstance(self.gen_length, int):
            self.block_length = self.gen_length
        _check_common(self.steps, self.gen_length, self.block_length, self.temperature, self.eos)
        if self.remasking not in REMASKING:
            raise UserError(f"unknown remasking strategy {self.remasking!r}; choose from {', '.join(REMASKING)}")
        nb = self.gen_length // self.block_length
        if self.steps % nb:
            raise UserError(f"steps {self.steps} must be divisible by the number of blocks "
                            f"{nb} (= gen_length / block_length)")
        if self.cfg_scale < 0:
            raise UserError(f"cfg_scale must be >= 0 (got {self.cfg_scale})")

    @property
    def total_steps(self) -> int:
        """Step callbacks per call (``steps``, split evenly over the blocks)."""
        return self.steps

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]] | torch.Tensor,
               generator: torch.Generator | None = None, callback: StepCallback | None = None) -> torch.Tensor:
        """Full sequences (B, P + gen_length): left-padded prompts then the generated tokens."""
        device = next(model.parameters()).device
        mask_id = model.mask_id if self.mask_id is None else int(self.mask_id)
        pad_id, eos_id = model.pad_id, model.eos_id
        x, attn, p = prepare_prompts(prompts, self.gen_length, mask_id, pad_id, device,
                                     require_prompt=self.cfg_scale > 0)
        b = x.shape[0]
        gens = per_sample_generators(generator, b, "cpu")
        prompt_index = torch.zeros_like(x, dtype=torch.bool)
        prompt_index[:, :p] = attn[:, :p].bool()
        num_blocks = self.gen_length // self.block_length
        steps = self.steps // num_blocks
        self.stats = SampleStats(tokens=b * self.gen_length)
        fill = eos_id if self.eos == "stop" else pad_id
        step_no = 0
        for nb in range(num_blocks):
            lo, hi = p + nb * self.block_length, p + (nb + 1) * self.block_length
            counts = get_num_transfer_tokens((x[:, lo:hi] == mask_id).sum(1), steps)
            for i in range(steps):
                mask_index = x == mask_id
                if not bool(mask_index.any()):
                    break
                if self.cfg_scale > 0:
                    un_x = x.clone()
                    un_x[prompt_index] = mask_id
                    both = model_logits(model, torch.cat([x, un_x]), torch.cat([attn, attn]))
                    cond, un = both.chunk(2)
                    logits = un + (self.cfg_scale + 1) * (cond - un)
                    self.stats.full_forwards += 2
                else:
                    logits = model_logits(model, x, attn)
                    self.stats.full_forwards += 1
                x0 = torch.empty_like(x)
                conf = torch.empty(x.shape, dtype=torch.float64, device=device)
                for j in range(b):
                    x0[j] = add_gumbel_noise(logits[j], self.temperature, gens[j]).argmax(-1)
                    if self.remasking == "low_confidence":
                        # generate.py: F.softmax(logits) in the logits' own dtype (float32 / bf16), so ties
                        # and near-ties rank exactly as there; the exact cast to float64 keeps the order
                        probs = logits[j].softmax(-1)
                        conf[j] = probs.gather(-1, x0[j, :, None]).squeeze(-1).double()
                    else:
                        conf[j] = torch.rand(x.shape[1], generator=gens[j]).to(device)  # float32, as generate.py
                conf[:, hi:] = float("-inf")
                x0 = torch.where(mask_index, x0, x)
                conf = torch.where(mask_index, conf, torch.full_like(conf, float("-inf")))
                for j in range(b):
                    k = int(counts[j, i])
                    if k > 0:
                        sel = torch.topk(conf[j], k).indices
                        x[j, sel] = x0[j, sel]
                x = run_callback(callback, step_no, 1 - (step_no + 1) / self.steps, x)
                step_no += 1
            if self.eos != "none":
                done = apply_eos(x, p, hi, eos_id, self.eos, fill)
                if bool(done.all()):
                    break
        return x


def generate(model: torch.nn.Module, prompt: torch.Tensor | Sequence[Sequence[int]],
             attention_mask: torch.Tensor | None = None, steps: int = 128, gen_length: int = 128,
             block_length: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
             remasking: str = "low_confidence", mask_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """LLaDA's ``generate()`` call (same argument names and defaults as github.com/ML-GSAI/LLaDA generate.py)
    on :class:`LLaDASampler`. ``prompt`` (B, L) may be left-padded, its padding marked 0 in ``attention_mask``;
    ``mask_id`` defaults to the model's. Returns (B, L + gen_length)."""
    if isinstance(prompt, torch.Tensor) and attention_mask is not None:
        prompt = prompt if prompt.ndim == 2 else prompt[None]
        am = attention_mask if attention_mask.ndim == 2 else attention_mask[None]
        rows = [r[m.bool()].tolist() for r, m in zip(prompt, am)]
        if len({len(r) for r in rows}) > 1 and any(int(m[0]) == 1 and not bool(m.all()) for m in am):
            raise UserError("attention_mask must mark left padding only (zeros first)")
        prompt = rows
    s = LLaDASampler(steps=steps, gen_length=gen_length, block_length=block_length, temperature=temperature,
                     cfg_scale=cfg_scale, remasking=remasking, mask_id=mask_id)
    return s.sample(model, prompt, generator=generator)


# -- Dream -------------------------------------------------------------------------------------------------
def _dream_confidence(logits: torch.Tensor, alg: str, temperature: float, top_p: float | None, top_k: int | None,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``sample_tokens``: (confidence, token) per row of (n, V) logits, in the logits' own dtype."""
    if temperature > 0:
        logits = logits / temperature
    logits = filter_top_k_top_p(logits, top_k, top_p)
    probs = logits.softmax(-1)
    if temperature > 0:
        # Dream draws with Categorical(probs).sample(): multinomial(probs / probs.sum(), 1) on the same stream
        norm = probs / probs.sum(-1, keepdim=True)
        x0 = torch.multinomial(norm.cpu(), 1, replacement=True, generator=generator).squeeze(-1).to(probs.device)
        conf = probs.gather(-1, x0[:, None]).squeeze(-1)
    else:
        conf, x0 = probs.max(-1)
    if alg == "topk_margin":
        top2 = torch.sort(probs, dim=-1, descending=True).values
        conf = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        conf = (probs * torch.log(probs + 1e-10)).sum(-1)
    return conf, x0


@dataclass
class DreamSampler:
    """Dream's diffusion sampler (see module docstring); whole-sequence, no blocks."""

    steps: int = 512
    gen_length: int = 512
    eps: float = 1e-3
    alg: str = "origin"
    alg_temp: float | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    eos: str = "none"
    mask_id: int | None = None  # None: the model's
    stats: SampleStats = field(default_factory=SampleStats, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_common(self.steps, self.gen_length, None, self.temperature, self.eos)
        if self.alg not in DREAM_ALGS:
            raise UserError(f"unknown Dream alg {self.alg!r}; choose from {', '.join(DREAM_ALGS)}")
        if not 0 < self.eps < 1:
            raise UserError(f"eps must be in (0, 1) (got {self.eps})")

    @property
    def total_steps(self) -> int:
        return self.steps

    def timesteps(self) -> torch.Tensor:
        """Dream's float32 grid linspace(1, eps, steps + 1); the step t→s uses (ts[i], ts[i+1])."""
        return torch.linspace(1, self.eps, self.steps + 1)

    def transfer_counts(self, n_mask: int) -> list[int]:
        """Tokens unmasked at each step for a row starting with ``n_mask`` masks (non-``origin`` algs)."""
        ts = self.timesteps()
        left, out = n_mask, []
        for i in range(self.steps):
            k = dream_transfer_count(left, ts[i], ts[i + 1], i == self.steps - 1)
            out.append(k)
            left -= k
        return out

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]] | torch.Tensor,
               generator: torch.Generator | None = None, callback: StepCallback | None = None) -> torch.Tensor:
        device = next(model.parameters()).device
        mask_id = model.mask_id if self.mask_id is None else int(self.mask_id)
        pad_id, eos_id = model.pad_id, model.eos_id
        x, attn, p = prepare_prompts(prompts, self.gen_length, mask_id, pad_id, device)
        b = x.shape[0]
        gens = per_sample_generators(generator, b, "cpu")
        ts = self.timesteps().to(device)
        self.stats = SampleStats(tokens=b * self.gen_length)
        for i in range(self.steps):
            mask_index = x == mask_id
            if not bool(mask_index.any()):
                break
            logits = model_logits(model, x, attn)
            self.stats.full_forwards += 1
            t, s = ts[i], ts[i + 1]  # float32 tensors, as Dream's (the counts' rounding depends on it)
            last = i == self.steps - 1
            for j in range(b):
                pos = mask_index[j].nonzero().squeeze(-1)
                if pos.numel() == 0:
                    continue
                ml = logits[j, pos]
                if self.alg == "origin":
                    p_transfer = 1 - s / t if not last else 1
                    take = torch.rand(pos.numel(), generator=gens[j]).to(device) < p_transfer
                    if bool(take.any()):
                        _, tok = _dream_confidence(ml[take], "maskgit_plus", self.temperature, self.top_p,
                                                   self.top_k, gens[j])
                        x[j, pos[take]] = tok
                    continue
                conf, tok = _dream_confidence(ml, self.alg, self.temperature, self.top_p, self.top_k, gens[j])
                k = dream_transfer_count(pos.numel(), t, s, last)
                if k <= 0:
                    continue
                # over the whole row with −inf off the masks, as Dream (the multinomial draws one number per column)
                full = torch.full((x.shape[1],), float("-inf"), dtype=conf.dtype, device=device)
                full[pos] = conf
                if self.alg_temp:
                    w = (full / self.alg_temp).softmax(-1)
                    sel = torch.multinomial(w.cpu(), k, replacement=False, generator=gens[j]).to(device)
                else:
                    sel = torch.topk(full, k).indices
                x[j, sel] = tok[torch.searchsorted(pos, sel)]
            x = run_callback(callback, i, float(s), x)
        if self.eos != "none":
            apply_eos(x, p, x.shape[1], eos_id, self.eos, eos_id if self.eos == "stop" else pad_id)
        return x


def dream_transfer_count(n_mask: int, t: torch.Tensor, s: torch.Tensor, last: bool) -> int:
    """Dream: ``int(n_mask · (1 − s/t))`` at step t→s (float32 arithmetic, as generation_utils.py), all at the last."""
    if last:
        return int(n_mask)
    return int(torch.tensor(float(n_mask), dtype=torch.float32) * (1 - s / t))


# -- exact: one token per full forward ---------------------------------------------------------------------------
ORDERS = ("entropy", "random", "left_to_right")


def pick_and_sample(logits: torch.Tensor, masked: torch.Tensor, order: str, temperature: float,
                    generator: torch.Generator, limit: int | None = None) -> tuple[int, int]:
    """Choose one masked position of a row and sample its token from the (tempered) conditional.

    ``logits`` (N, V); ``masked`` (N,) bool; ``limit`` hides positions ≥ limit (block boundary).
    Order ``entropy``: lowest-entropy position first (Bansal et al. 2025, their trajectories and inference).
    """
    cand = masked.clone()
    if limit is not None:
        cand[limit:] = False
    pos = cand.nonzero().squeeze(-1)
    if order == "entropy":
        ent = torch.special.entr(logits[pos].double().softmax(-1)).sum(-1)
        i = int(pos[int(ent.argmin())])
    elif order == "random":
        i = int(pos[int(torch.randint(pos.numel(), (1,), generator=generator))])
    else:
        i = int(pos[0])
    row = logits[i].double()
    if temperature == 0:
        tok = int(row.argmax())
    else:
        probs = (row / temperature).softmax(-1)
        tok = int(torch.multinomial(probs.cpu(), 1, generator=generator))
    return i, tok


@dataclass
class ExactSampler:
    """One token per full forward: gen_length forwards for gen_length tokens (the sampler's exact joint)."""

    gen_length: int = 64
    block_length: int | None = None
    order: str = "entropy"
    temperature: float = 1.0
    eos: str = "none"
    stats: SampleStats = field(default_factory=SampleStats, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_common(self.gen_length, self.gen_length, self.block_length, self.temperature, self.eos)
        if self.order not in ORDERS:
            raise UserError(f"unknown order {self.order!r}; choose from {', '.join(ORDERS)}")

    @property
    def total_steps(self) -> int:
        return self.gen_length

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]] | torch.Tensor,
               generator: torch.Generator | None = None, callback: StepCallback | None = None) -> torch.Tensor:
        device = next(model.parameters()).device
        x, attn, p = prepare_prompts(prompts, self.gen_length, model.mask_id, model.pad_id, device)
        b = x.shape[0]
        gens = per_sample_generators(generator, b, "cpu")
        bl = self.block_length or self.gen_length
        self.stats = SampleStats(tokens=b * self.gen_length)
        for step in range(self.gen_length):
            logits = model_logits(model, x, attn, forbid_mask=True)
            self.stats.full_forwards += 1
            limit = p + (step // bl + 1) * bl
            for j in range(b):
                i, tok = pick_and_sample(logits[j], x[j] == model.mask_id, self.order, self.temperature, gens[j], limit)
                x[j, i] = tok
            x = run_callback(callback, step, 1 - (step + 1) / self.gen_length, x)
        if self.eos != "none":
            apply_eos(x, p, x.shape[1], model.eos_id, self.eos, model.eos_id if self.eos == "stop" else model.pad_id)
        return x
