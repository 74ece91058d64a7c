"""LLaDA2's block refinement (diffusers 0.42 ``LLaDA2Pipeline`` + ``BlockRefinementScheduler``) as an mgen sampler.

LLaDA2 (inclusionAI LLaDA2.0 / 2.1) decodes differently from LLaDA's generate.py (:mod:`mgen.samplers.dlm`):

- **absolute block alignment**: the sequence (prompt + ``gen_length``, rounded up to whole blocks) is cut into
  blocks of ``block_length`` from position 0, so the prompt fills the first blocks and the first generated block
  may start inside a prompt block (its prompt positions are never edited);
- **prefix-only context**: while block n is refined the model sees only ``x[:, :(n+1)·block_length]`` (the
  prompt, the finished blocks and the current one), with a 2-D attention mask (prompt mask, ones over the
  generation, zeros over the block-aligned tail) and absolute ``position_ids``;
- **threshold commit**: each step samples every position of the block (greedy at temperature 0, otherwise
  temperature → top-k → top-p → multinomial) and commits, per row, every still-masked position whose sampled
  probability is above ``threshold`` if there are at least the schedule's ``n`` of them, else the top-``n``
  (``n`` = ``block_length`` spread evenly over ``steps``, the first ``block_length % steps`` steps one more);
- **editing**: positions already decoded (not prompt) are replaced when the model samples a *different* token
  with probability above ``editing_threshold``; once a block has no mask left the loop continues while
  something was edited, for at most ``max_post_steps`` extra steps;
- ``steps`` is *per block* (``min(steps, gen_length // minimal_topk)``); **EOS**: a row is finished when an
  EOS is committed and everything between the prompt and its first EOS is decoded; finished rows are frozen and
  decoding stops when every row is finished (``eos_early_stop``);
- the output is the generated part only (no prompt); :func:`trim_at_eos` cuts each row after its first EOS, as
  the pipeline does before decoding text.

``reference="diffusers"`` draws from one generator for the whole batch exactly as diffusers does (multinomial over
all B·block rows), with the batch-wide loop control, so ``LLaDA2Pipeline(...)(input_ids=..., generator=g)`` and
``LLaDA2Sampler(..., reference="diffusers").sample(model, ids, generator=g)`` give the same tokens. The default
mode decodes each row on its own (its own generator, its own loop control), so a row's tokens do not depend on
the rest of the batch (for prompts of one length; absolute alignment makes the blocks depend on the padded
prompt length).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators

SAMPLING_METHODS = ("auto", "greedy", "multinomial")
REFERENCES = (None, "diffusers")
StepCallback = Callable[[int, float, dict], "dict | None"]


class LLaDA2Adapter(torch.nn.Module):
    """The thin adapter diffusers' ``LLaDA2Pipeline`` needs: ``model(x, attention_mask=, position_ids=).logits``.

    Wraps a text generator with mgen's interface (``forward(input_ids, attention_mask)`` → aligned logits, e.g.
    dlm-text). mgen's models derive RoPE positions from the attention mask (counted from a row's first real
    token), which equals LLaDA2's absolute ``position_ids`` when the prompt is not left-padded.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        for k in ("mask_id", "eos_id", "pad_id"):
            setattr(self, k, getattr(model, k, None))

    @property
    def device(self) -> torch.device:
        """Where the weights are (diffusers' pipelines ask their modules for it)."""
        return next(self.inner.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.inner.parameters()).dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> SimpleNamespace:
        out = self.inner(input_ids, attention_mask=attention_mask)
        return SimpleNamespace(logits=out.logits if hasattr(out, "logits") else out)


def _logits(model: Any, x: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Call ``model`` as LLaDA2Pipeline does when it takes ``position_ids``; otherwise mgen's interface."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    if "position_ids" in params:
        out = model(x, attention_mask=attn, position_ids=pos)
    else:
        out = model(x, attention_mask=attn)
    return out.logits if hasattr(out, "logits") else out


def num_transfer_tokens(block_length: int, steps: int) -> torch.Tensor:
    """``BlockRefinementScheduler.get_num_transfer_tokens``: block_length // steps each, +1 on the first r steps."""
    out = torch.full((steps,), block_length // steps, dtype=torch.long)
    out[: block_length % steps] += 1
    return out


def _top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    if top_k is None or top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k=top_k, dim=-1).values[..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def _top_p(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    if top_p is None or top_p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    remove = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1) > float(top_p)
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = 0
    sorted_logits = sorted_logits.masked_fill(remove, torch.finfo(sorted_logits.dtype).min)
    return logits.scatter(-1, idx, sorted_logits)


def trim_at_eos(sequences: torch.Tensor, eos_id: int | None) -> list[torch.Tensor]:
    """Each row up to and including its first EOS (LLaDA2Pipeline's text post-processing)."""
    rows = []
    for seq in sequences:
        hit = (seq == eos_id).nonzero(as_tuple=True)[0] if eos_id is not None else seq[:0]
        rows.append(seq[: int(hit[0]) + 1] if hit.numel() else seq)
    return rows


@dataclass
class LLaDA2Sampler:
    """LLaDA2Pipeline's decoding (module docstring); defaults = ``LLaDA2Pipeline.__call__``'s, block 32."""

    gen_length: int = 256
    block_length: int = 32
    steps: int = 32  # per block (LLaDA2Pipeline's num_inference_steps)
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    sampling_method: str = "multinomial"
    threshold: float = 0.7
    editing_threshold: float | None = 0.5
    max_post_steps: int = 16
    minimal_topk: int = 1
    eos_early_stop: bool = True
    mask_id: int | None = None  # None: the model's
    eos_id: int | None = None  # None: the model's
    reference: str | None = None
    eos: str | None = None  # mgen's EOS switch: "none" turns eos_early_stop off, "stop" / "pad" on

    def __post_init__(self) -> None:
        if self.eos is not None:
            if self.eos not in ("none", "stop", "pad"):
                raise UserError(f"unknown EOS handling {self.eos!r}; choose from none, stop, pad")
            self.eos_early_stop = self.eos != "none"
        for name in ("gen_length", "block_length", "steps", "minimal_topk"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"{name} must be a positive integer (got {v!r})")
        if self.gen_length % self.block_length:
            raise UserError(f"gen_length {self.gen_length} is not a multiple of block_length {self.block_length}")
        if self.threshold < 0:
            raise UserError(f"threshold must be >= 0 (got {self.threshold})")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (got {self.temperature})")
        if self.sampling_method not in SAMPLING_METHODS:
            raise UserError(f"unknown sampling_method {self.sampling_method!r}; choose from "
                            f"{', '.join(SAMPLING_METHODS)}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.max_post_steps < 0:
            raise UserError(f"max_post_steps must be >= 0 (got {self.max_post_steps})")
        if self.reference not in REFERENCES:
            raise UserError(f"unknown reference {self.reference!r}; choose None or 'diffusers'")

    @property
    def steps_per_block(self) -> int:
        return min(self.steps, self.gen_length // self.minimal_topk)

    @property
    def total_steps(self) -> int:
        """LLaDA2Pipeline's ``num_timesteps`` for a block-aligned prompt: steps per block × generated blocks
        (editing adds post steps, early EOS removes some)."""
        return self.steps_per_block * (self.gen_length // self.block_length)

    @torch.no_grad()
    def sample(self, model: Any, input_ids: torch.Tensor | Sequence[Sequence[int]],
               attention_mask: torch.Tensor | None = None,
               generator: torch.Generator | list[torch.Generator] | None = None,
               callback: StepCallback | None = None) -> torch.Tensor:
        """The generated tokens (B, gen_length), without the prompt (LLaDA2PipelineOutput.sequences).

        ``callback(step, step_in_block, {"x": window})`` after every refinement step (``window`` = the sequence
        up to the end of the current block); a returned ``{"x": …}`` replaces the window.
        """
        mask_id = self.mask_id if self.mask_id is not None else getattr(model, "mask_id", None)
        if mask_id is None:
            raise UserError(f"LLaDA2 decoding needs a mask token; {type(model).__name__} has none (pass mask_id)")
        eos_id = self.eos_id if self.eos_id is not None else getattr(model, "eos_id", None)
        try:
            device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            device = torch.device("cpu")
        ids, am = self._prompt(input_ids, attention_mask, getattr(model, "pad_id", None) or 0)
        ids, am = ids.to(device), am.to(device)
        if self.reference == "diffusers":
            if isinstance(generator, (list, tuple)):
                raise UserError("reference='diffusers' uses one generator for the batch, as LLaDA2Pipeline")
            return self._run(model, ids, am, int(mask_id), eos_id, generator, callback, 0)
        gens = per_sample_generators(generator, ids.shape[0], device)
        rows, count = [], [0]

        def counted(step: int, t: float, state: dict) -> dict | None:
            out = callback(count[0], t, state) if callback is not None else None
            count[0] += 1
            return out

        for r in range(ids.shape[0]):
            rows.append(self._run(model, ids[r:r + 1], am[r:r + 1], int(mask_id), eos_id, gens[r], counted, 0))
        return torch.cat(rows)

    @staticmethod
    def _prompt(input_ids: torch.Tensor | Sequence[Sequence[int]], attention_mask: torch.Tensor | None,
                pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(input_ids, torch.Tensor):
            ids = input_ids[None] if input_ids.ndim == 1 else input_ids
            if attention_mask is None:
                am = torch.ones_like(ids, dtype=torch.long)
            else:
                am = (attention_mask[None] if attention_mask.ndim == 1 else attention_mask).long()
                if am.shape != ids.shape:
                    raise UserError(f"attention_mask shape {tuple(am.shape)} must match input_ids {tuple(ids.shape)}")
            return ids.long(), am
        rows = [list(map(int, r)) for r in input_ids]
        if not rows:
            raise UserError("no prompts given")
        p = max(len(r) for r in rows)
        ids = torch.full((len(rows), p), pad_id, dtype=torch.long)
        am = torch.zeros((len(rows), p), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            if r:
                ids[i, p - len(r):] = torch.tensor(r)
                am[i, p - len(r):] = 1
        return ids, am

    def _sample_tokens(self, logits: torch.Tensor, generator: torch.Generator | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``BlockRefinementScheduler._sample_from_logits``: (tokens, their probabilities)."""
        v = logits.shape[-1]
        flat = logits.reshape(-1, v)
        use_multinomial = self.sampling_method == "multinomial" or (self.sampling_method == "auto"
                                                                    and self.temperature != 0.0)
        if self.temperature == 0.0 or not use_multinomial:
            probs = torch.softmax(flat.float(), dim=-1)
            tok = flat.argmax(dim=-1, keepdim=True)
        else:
            scaled = flat / self.temperature if self.temperature != 1.0 else flat
            filtered = _top_p(_top_k(scaled, self.top_k), self.top_p)
            probs = torch.softmax(filtered.float(), dim=-1)
            if generator is not None and generator.device != probs.device:
                tok = torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)
            else:
                tok = torch.multinomial(probs, num_samples=1, generator=generator)
        prob = torch.gather(probs, -1, tok)
        return tok.view(*logits.shape[:-1]), prob.view(*logits.shape[:-1])

    def _run(self, model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, mask_id: int,
             eos_id: int | None, generator: torch.Generator | None, callback: StepCallback | None,
             step0: int) -> torch.Tensor:
        """One LLaDA2Pipeline call (batch-wide loop control) on ``prompt_ids``."""
        device = prompt_ids.device
        bl, gen = self.block_length, self.gen_length
        steps = self.steps_per_block
        schedule = num_transfer_tokens(bl, steps).to(device)
        b, p = prompt_ids.shape
        num_blocks = (p + gen + bl - 1) // bl
        total = num_blocks * bl
        attn = torch.zeros((b, total), device=device, dtype=torch.long)
        attn[:, :p] = prompt_mask
        attn[:, p:p + gen] = 1
        pos = torch.arange(total, device=device, dtype=torch.long)[None].expand(b, -1)
        x = torch.full((b, total), mask_id, device=device, dtype=torch.long)
        if p > 0:
            x[:, :p] = prompt_ids
        finished = torch.zeros((b,), device=device, dtype=torch.bool)
        editing = self.editing_threshold is not None and self.editing_threshold > 0.0
        global_step = step0
        for nb in range(p // bl, num_blocks):
            end = (nb + 1) * bl
            block_x, block_attn, block_pos = x[:, :end], attn[:, :end], pos[:, :end]
            prompt_in_block = torch.zeros(bl, device=device, dtype=torch.bool)
            if nb * bl < p:
                prompt_in_block[: min(p - nb * bl, bl)] = True
            post_steps, step_idx, go_on = 0, 0, True
            while go_on:
                block = block_x[:, -bl:]
                active = block == mask_id
                masks_remaining = bool(active.any())
                if not masks_remaining:
                    post_steps += 1
                logits = _logits(model, block_x, block_attn, block_pos)[:, -bl:, :]
                sampled, probs = self._sample_tokens(logits, generator)
                transfer = torch.zeros_like(sampled, dtype=torch.bool)
                if masks_remaining:
                    n = int(schedule[min(step_idx, len(schedule) - 1)].item())
                    conf = torch.where(active, probs.to(torch.float32),
                                       torch.full_like(probs, -torch.inf, dtype=torch.float32))
                    for r in range(b):
                        high = conf[r] > self.threshold
                        if high.sum().item() >= n:
                            transfer[r] = high
                        else:
                            k = min(n, int(active[r].sum().item()))
                            if k > 0:
                                transfer[r, torch.topk(conf[r], k=k).indices] = True
                edit = torch.zeros_like(sampled, dtype=torch.bool)
                if editing:
                    editable = (~active) & (~prompt_in_block[None])
                    edit_conf = torch.where(editable, probs.to(torch.float32),
                                            torch.full_like(probs, -torch.inf, dtype=torch.float32))
                    edit = (edit_conf > float(self.editing_threshold)) & (sampled != block) & editable
                final = transfer | edit
                prev = block.clone()
                if final.any():
                    prev[final] = sampled[final]
                if self.eos_early_stop and finished.any():
                    final = final & ~finished[:, None]
                if final.any():
                    block_x[:, -bl:] = torch.where(final, prev, block)
                if self.eos_early_stop and eos_id is not None:
                    finished = self._eos_finished(block_x, sampled, final, finished, eos_id, mask_id, p)
                if callback is not None:
                    upd = callback(global_step, float(step_idx), {"x": block_x})
                    if upd and "x" in upd:
                        block_x = upd["x"]
                global_step += 1
                if masks_remaining:
                    step_idx += 1
                go_on = self._should_continue(step_idx, steps, masks_remaining, editing, edit, post_steps, finished)
            x[:, :end] = block_x
            if self.eos_early_stop and bool(finished.all()):
                break
        return x[:, p:p + gen]

    @staticmethod
    def _eos_finished(cur_x: torch.Tensor, sampled: torch.Tensor, final: torch.Tensor, finished: torch.Tensor,
                      eos_id: int, mask_id: int, prompt_length: int) -> torch.Tensor:
        """``BlockRefinementScheduler.check_eos_finished``."""
        for r in range(cur_x.shape[0]):
            if finished[r] or not bool((sampled[r][final[r]] == eos_id).any()):
                continue
            hits = (cur_x[r] == eos_id).nonzero(as_tuple=True)[0]
            if hits.numel() == 0 or int(hits[0]) < prompt_length:
                continue
            if bool((cur_x[r, prompt_length:int(hits[0])] != mask_id).all()):
                finished[r] = True
        return finished

    def _should_continue(self, step_idx: int, steps: int, masks_remaining: bool, editing: bool,
                         edit: torch.Tensor, post_steps: int, finished: torch.Tensor) -> bool:
        """``BlockRefinementScheduler.check_block_should_continue``."""
        if bool(finished.all()):
            return False
        if not masks_remaining and (not editing or not bool(edit.any())):
            return False
        if masks_remaining and step_idx >= steps:
            return False
        if not masks_remaining and post_steps > self.max_post_steps:
            return False
        return True
