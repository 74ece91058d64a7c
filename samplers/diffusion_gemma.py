"""DiffusionGemma's block-diffusion sampler (transformers 5.24, ``models/diffusion_gemma``), driven by mgen.

DiffusionGemma (``DiffusionGemmaForBlockDiffusion``, checkpoint google/diffusiongemma-26B-A4B-it) is a
*uniform-state* diffusion LM: there is no mask token. Its ``generate`` (transformers'
``generation_diffusion_gemma.py``) writes the answer canvas by canvas (``config.canvas_length`` tokens each),
one canvas after another on the encoder's KV cache:

1. the encoder (causal) writes the prompt — later only the last canvas — into the KV cache;
2. the canvas starts as uniform random tokens; for ``cur_step = N, N-1, …, 1`` (N = ``max_denoising_steps``):
   the decoder reads canvas + cache + the previous step's logits (self-conditioning) and returns logits;
   they are divided by the linear temperature ``t_min + (t_max - t_min)·cur_step/N``; a *denoiser canvas* is
   drawn from their softmax; the **entropy-bounded** acceptance (Ben-Hamu et al. 2025, arXiv 2505.24857) keeps
   the lowest-entropy positions while ``cumsum(H) − H ≤ entropy_bound`` (all others keep the current token),
   and every non-accepted position is then re-noised with a fresh uniform token;
3. a row stops denoising once its argmax canvas has been the same for ``stability_threshold`` steps *and* the
   mean entropy of its tempered logits is below ``confidence_threshold`` (a stopped row is frozen);
4. the canvas's **argmax** (not the sampled canvas) is appended; a row whose canvas holds EOS is finished: the
   tokens after its first EOS, and every later canvas of it, become the pad id.

:class:`DiffusionGemmaSampler` implements that loop itself and calls the model only for its network pieces
(encoder, decoder + LM head, attention-mask builders). ``reference="transformers"`` draws every random number
from the *global* torch RNG in transformers' order (canvas ``randint``, then per step ``multinomial`` over all
B·L rows and the re-noising ``randint``), so that ``torch.manual_seed(s); sampler.sample(...)`` equals
``torch.manual_seed(s); model.generate(...)`` token for token. The default mode draws each row's numbers from
its own generator (:func:`mgen.samplers.base.per_sample_generators`) and only for rows still running, so a
row's output does not depend on the batch it is in (docs/ARCHITECTURE.md, "Samplers").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators

REFERENCES = (None, "transformers")
StepCallback = Callable[[int, float, dict], "dict | None"]


def entropy_bound_accept(logits: torch.Tensor, entropy_bound: float) -> torch.Tensor:
    """transformers' ``EntropyBoundSampler.accept_canvas`` rule: (B, L, V) logits → (B, L) accepted mask.

    Positions sorted by entropy (ascending) are accepted while ``cumsum(H) − H ≤ entropy_bound`` — the sum of
    the accepted entropies minus their maximum bounds their mutual information (arXiv 2505.24857, Eq. 9).
    """
    token_entropy = torch.distributions.Categorical(logits=logits).entropy()
    sorted_entropy, order = torch.sort(token_entropy, dim=-1, descending=False)
    selected = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= entropy_bound
    return torch.scatter(torch.zeros_like(selected), -1, order, selected)


class _StableAndConfident:
    """transformers' ``StableAndConfidentStoppingCriteria`` (per row: stable argmax and mean entropy low)."""

    def __init__(self, stability_threshold: int, confidence_threshold: float) -> None:
        self.stability_threshold = stability_threshold
        self.confidence_threshold = confidence_threshold
        self.history: torch.Tensor | None = None

    def __call__(self, argmax_canvas: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.stability_threshold == 0:
            stable = torch.ones((logits.shape[0],), device=logits.device, dtype=torch.bool)
        else:
            if self.history is None:
                self.history = torch.full((self.stability_threshold, *argmax_canvas.shape), -1,
                                          dtype=argmax_canvas.dtype, device=argmax_canvas.device)
            stable = (self.history == argmax_canvas[None]).all(dim=-1).all(dim=0)
            self.history = torch.roll(self.history, shifts=-1, dims=0)
            self.history[-1] = argmax_canvas
        entropy = torch.distributions.Categorical(logits=logits).entropy()
        return stable & (entropy.mean(dim=-1) < self.confidence_threshold)


class _GlobalDraws:
    """transformers' draws: the global torch RNG, whole batch, every row (finished or not)."""

    def __init__(self, vocab_size: int, canvas_length: int) -> None:
        self.v, self.l = vocab_size, canvas_length

    def uniform(self, batch: int, device: torch.device, active: torch.Tensor) -> torch.Tensor:
        return torch.randint(low=0, high=self.v, size=(batch, self.l), device=device)

    def categorical(self, probs: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        b, l, v = probs.shape
        return torch.multinomial(probs.view(-1, v), num_samples=1).squeeze(-1).view(b, l)


class _PerSampleDraws:
    """mgen's draws: row i from generator i, only while row i is still running (batch-invariant)."""

    def __init__(self, gens: list[torch.Generator], vocab_size: int, canvas_length: int) -> None:
        self.gens, self.v, self.l = gens, vocab_size, canvas_length

    def uniform(self, batch: int, device: torch.device, active: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((batch, self.l), dtype=torch.long, device=device)
        for i in active.nonzero().flatten().tolist():
            g = self.gens[i]
            out[i] = torch.randint(0, self.v, (self.l,), generator=g, device=g.device).to(device)
        return out

    def categorical(self, probs: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        b, l, v = probs.shape
        out = torch.zeros((b, l), dtype=torch.long, device=probs.device)
        for i in active.nonzero().flatten().tolist():
            g = self.gens[i]
            out[i] = torch.multinomial(probs[i].to(g.device), 1, generator=g).squeeze(-1).to(probs.device)
        return out


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids → (ids, attention_mask), left-padded with ``pad_id`` (as transformers' generate expects)."""
    rows = [list(map(int, r)) for r in rows]
    if not rows or any(len(r) == 0 for r in rows):
        raise UserError("give at least one non-empty prompt")
    p = max(len(r) for r in rows)
    ids = torch.full((len(rows), p), pad_id, dtype=torch.long)
    am = torch.zeros((len(rows), p), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, p - len(r):] = torch.tensor(r)
        am[i, p - len(r):] = 1
    return ids, am


def unwrap_diffusion_gemma(model: Any) -> Any:
    """The transformers ``DiffusionGemmaForBlockDiffusion`` inside an mgen adapter (or the model itself)."""
    inner = getattr(model, "hf_model", model)
    config = getattr(inner, "config", None)
    if getattr(config, "model_type", None) != "diffusion_gemma" or not hasattr(inner, "model"):
        raise UserError(f"{type(model).__name__} is not a DiffusionGemma model (model_type 'diffusion_gemma')")
    return inner


@dataclass
class DiffusionGemmaSampler:
    """DiffusionGemma generation (module docstring); defaults = transformers' global generation defaults."""

    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    stability_threshold: int | None = 1
    confidence_threshold: float | None = 0.005
    reference: str | None = None
    max_new_tokens: int = 256  # used when sample() is not given one (pipelines)
    eos: str | None = None  # mgen's EOS switch: "none" ignores EOS ids; None / "stop" / "pad": as transformers
    tokens_per_forward: torch.Tensor | None = field(default=None, init=False, repr=False)
    _canvases: int = field(default=1, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_denoising_steps, int) or self.max_denoising_steps <= 0:
            raise UserError(f"max_denoising_steps must be a positive integer (got {self.max_denoising_steps!r})")
        if not self.entropy_bound > 0:
            raise UserError(f"entropy bound must be > 0 (got {self.entropy_bound})")
        if self.t_min < 0 or self.t_max < 0 or self.t_max <= self.t_min:
            raise UserError(f"need 0 <= t_min < t_max (got t_min={self.t_min}, t_max={self.t_max})")
        if self.stability_threshold is not None and (not isinstance(self.stability_threshold, int)
                                                     or self.stability_threshold < 0):
            raise UserError(f"stability_threshold must be an integer >= 0 (got {self.stability_threshold!r})")
        if self.confidence_threshold is not None and not self.confidence_threshold > 0:
            raise UserError(f"confidence_threshold must be > 0 (got {self.confidence_threshold!r})")
        if self.reference not in REFERENCES:
            raise UserError(f"unknown reference {self.reference!r}; choose None or 'transformers'")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be a positive integer (got {self.max_new_tokens!r})")
        if self.eos not in (None, "none", "stop", "pad"):
            raise UserError(f"unknown EOS handling {self.eos!r}; choose from none, stop, pad")

    @property
    def total_steps(self) -> int:
        """Callback calls of the last planned run at most (early stopping makes it fewer):
        ``max_denoising_steps`` × canvases (see :meth:`plan`)."""
        return self.max_denoising_steps * self._canvases

    def plan(self, model: Any, max_new_tokens: int) -> int:
        """Set :attr:`total_steps` for ``max_new_tokens`` on ``model``; returns the number of canvases."""
        inner = unwrap_diffusion_gemma(model)
        self._canvases = math.ceil(max_new_tokens / inner.config.canvas_length)
        return self._canvases

    @torch.no_grad()
    def sample(self, model: Any, input_ids: torch.Tensor | Sequence[Sequence[int]],
               attention_mask: torch.Tensor | None = None,
               max_new_tokens: int | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
               eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
               callback: StepCallback | None = None) -> torch.Tensor:
        """Token ids (B, prompt + canvases·canvas_length), as ``model.generate(..., return_dict_in_generate=False)``.

        ``input_ids``: a (B, P) tensor (with ``attention_mask`` for left padding) or lists of ids (left-padded
        here). ``max_new_tokens`` defaults to the sampler's field. ``eos_token_id`` / ``pad_token_id`` default to
        the model's ``generation_config`` (as transformers);
        ``callback(step, temperature, {"x": canvas, "argmax": argmax canvas})`` runs after every denoising step
        and may return replacements for those tensors.
        """
        from transformers import DynamicCache

        m = unwrap_diffusion_gemma(model)
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be a positive integer (got {max_new_tokens!r})")
        cfg = m.config
        canvas_length, vocab = int(cfg.canvas_length), int(cfg.text_config.vocab_size)
        gen_cfg = getattr(m, "generation_config", None)
        if eos_token_id is None and self.eos != "none":
            eos_token_id = getattr(gen_cfg, "eos_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(gen_cfg, "pad_token_id", None)
        if not isinstance(input_ids, torch.Tensor):
            input_ids, attention_mask = _left_pad(input_ids, 0 if pad_token_id is None else int(pad_token_id))
        elif input_ids.ndim == 1:
            input_ids = input_ids[None]
        device = m.device
        input_ids = input_ids.to(device)
        attention_mask = None if attention_mask is None else attention_mask.to(device)
        batch, cur_len = input_ids.shape
        max_length = cur_len + max_new_tokens
        self._canvases = math.ceil(max_new_tokens / canvas_length)
        eos = None if eos_token_id is None else torch.tensor(eos_token_id, device=device).flatten()

        if self.reference == "transformers":
            draws: Any = _GlobalDraws(vocab, canvas_length)
        else:
            draws = _PerSampleDraws(per_sample_generators(generator, batch, "cpu"), vocab, canvas_length)
        stopper = None
        if self.stability_threshold is not None and self.confidence_threshold is not None:
            stopper = _StableAndConfident(self.stability_threshold, float(self.confidence_threshold))

        cache = DynamicCache(config=cfg.get_text_config(decoder=True))
        encoder_position_ids = torch.arange(0, cur_len, dtype=torch.int32, device=device)[None]
        decoder_position_ids = torch.arange(cur_len, cur_len + canvas_length, dtype=torch.int32, device=device)[None]
        if attention_mask is not None:
            if attention_mask.ndim != 2:
                raise UserError("attention_mask must be 2-D (batch, prompt length)")
            attention_mask = attention_mask.bool()
        else:
            attention_mask = torch.ones((batch, cur_len), dtype=torch.bool, device=device)
        decoder_attention_mask = torch.nn.functional.pad(attention_mask, (0, canvas_length), value=True)
        finished_sequences = torch.zeros(batch, dtype=torch.bool, device=device)
        forward_passes = torch.zeros(batch, dtype=torch.int, device=device)
        embed_dtype = m.model.decoder.embed_tokens.weight.dtype
        n_steps = self.max_denoising_steps
        initial_len = cur_len
        global_step = 0

        for canvas_no in range(self._canvases):
            # 1.a encoder: the prompt (first canvas) or the last canvas into the KV cache
            enc_ids = (input_ids if canvas_no == 0 else input_ids[:, -canvas_length:]).clone(
                memory_format=torch.contiguous_format)
            dummy = torch.empty((batch, enc_ids.shape[1], 0), dtype=m.dtype, device=device)
            enc_masks = m.model.encoder.create_masks_for_generate(
                config=cfg, inputs_embeds=dummy, attention_mask=attention_mask, cache=cache,
                position_ids=encoder_position_ids, mm_token_type_ids=None)
            cache = m.model.encoder(input_ids=enc_ids, attention_mask=enc_masks, cache=cache,
                                    position_ids=encoder_position_ids).cache
            # 1.b a uniform random canvas
            canvas = draws.uniform(batch, device, ~finished_sequences)
            sc_logits: torch.Tensor | None = None
            mask_mapping = m.model.decoder.create_diffusion_decoder_attention_mask(
                config=cfg, inputs_embeds=canvas.unsqueeze(-1), cache=cache,
                decoder_attention_mask=decoder_attention_mask)
            finished = torch.zeros(batch, dtype=torch.bool, device=device)
            if stopper is not None:
                stopper.history = None
            argmax_canvas = canvas
            # 1.c denoising, cur_step = N .. 1 (steps *remaining*)
            for cur_step in reversed(range(1, n_steps + 1)):
                forward_passes += ~(finished | finished_sequences)
                running = ~(finished | finished_sequences)
                step_t = torch.tensor(cur_step, device=device, dtype=torch.int32)
                logits = m(decoder_input_ids=canvas, self_conditioning_logits=sc_logits,
                           decoder_attention_mask=mask_mapping, cache=cache,
                           decoder_position_ids=decoder_position_ids).logits
                # LinearTemperatureScheduleLogitsProcessor, with cur_step an int32 tensor as in generate()
                temperature = self.t_min + ((self.t_max - self.t_min) * (step_t / n_steps))
                processed = logits / temperature
                probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
                denoiser_canvas = draws.categorical(probs, running)
                new_argmax = torch.argmax(processed, dim=-1)
                accepted_mask = entropy_bound_accept(processed, self.entropy_bound)
                accepted = torch.where(accepted_mask, denoiser_canvas, canvas)
                noise = draws.uniform(batch, device, running)
                new_canvas = torch.where(~accepted_mask, noise, accepted)
                if stopper is not None:
                    if finished.any():  # frozen rows keep their state
                        new_argmax = torch.where(finished[:, None], argmax_canvas, new_argmax)
                        new_canvas = torch.where(finished[:, None], canvas, new_canvas)
                        processed = torch.where(finished[:, None, None], sc_logits, processed)
                    finished = finished | stopper(new_argmax, processed)
                sc_logits = processed.to(embed_dtype)
                canvas, argmax_canvas = new_canvas, new_argmax
                if callback is not None:
                    upd = callback(global_step, float(temperature), {"x": canvas, "argmax": argmax_canvas})
                    if upd:
                        canvas = upd.get("x", canvas)
                        argmax_canvas = upd.get("argmax", argmax_canvas)
                global_step += 1
                if bool(finished.all()):
                    break
            # 1.d append the argmax canvas; 1.e EOS / length stopping and pad
            input_ids = torch.cat([input_ids, argmax_canvas], dim=-1)
            input_ids, finished_sequences = self._finalize(input_ids, finished_sequences, canvas_length, eos,
                                                           pad_token_id, max_length)
            if bool(finished_sequences.all()):
                break
            # 1.f next canvas
            cur_len += canvas_length
            decoder_attention_mask = torch.nn.functional.pad(decoder_attention_mask, (0, canvas_length), value=True)
            attention_mask = torch.nn.functional.pad(attention_mask, (0, canvas_length), value=True)
            encoder_position_ids = decoder_position_ids
            decoder_position_ids = torch.arange(cur_len, cur_len + canvas_length, dtype=torch.int32,
                                                device=device)[None]

        new_tokens = input_ids[:, initial_len:]
        valid = (new_tokens != pad_token_id).sum(-1) if pad_token_id is not None else new_tokens.shape[1]
        self.tokens_per_forward = valid / forward_passes
        return input_ids

    @staticmethod
    def _finalize(input_ids: torch.Tensor, finished_sequences: torch.Tensor, canvas_length: int,
                  eos: torch.Tensor | None, pad_token_id: int | None, max_length: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' ``_finalize_canvas``: MaxLength + EOS criteria on the new canvas, then the pad fill."""
        done = torch.full_like(finished_sequences, input_ids.shape[1] >= max_length)
        if eos is not None:
            done = done | torch.isin(input_ids[:, -canvas_length:], eos).any(dim=-1)
        previously = finished_sequences
        finished_sequences = previously | done
        if pad_token_id is not None and bool(finished_sequences.any()):
            input_ids[previously, -canvas_length:] = pad_token_id
            if eos is not None and bool(done.any()):
                new_tokens = input_ids[:, -canvas_length:]
                is_eos = torch.isin(new_tokens, eos)
                cum = is_eos.cumsum(dim=-1)
                new_tokens[(cum > 0) & ~((cum == 1) & is_eos)] = pad_token_id
        return input_ids, finished_sequences
