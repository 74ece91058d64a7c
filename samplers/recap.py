"""ReCAP: context-feature reuse for masked generators, as one wrapper around any cache-aware sampler.

Liu, Liu, Van den Broeck, Liang, "Plug-and-Play Context Feature Reuse for Efficient Masked Generation"
(arXiv 2505.19089, NeurIPS 2025; official code github.com/liebenxj/ReCAP, ``examples/MaskGIT+ReCAP`` and
``examples/MAR+ReCAP``). The K decoding steps of the base sampler keep their mask schedule; they are split
into *full* and *cheap* evaluations (paper §3, Alg. 1):

* the first ``pre_full_steps`` steps are full only; after them every full step is followed by
  ``cache_steps`` cheap ones (1 in all of the paper's runs; the official ``--pre_full_iters`` /
  ``--num_cache_iters``). :meth:`ReCAP.plan` gives the sequence.
* **full step**: the generator runs normally and every attention layer records its K/V
  (:class:`mgen.nn.KVCache`, mode ``record``). At that moment the *group* of the coming cheap steps is
  fixed: the tokens decoded now plus those the cheap steps will decode. MaskGIT ranks the masked
  positions by its Gumbel-annealed confidence: the top n_t are decoded now, the next ones are reserved,
  in rank order, for the cheap steps (official ``cache_decoding.py``: ``unmask_idx = sorted_idx[:, :ntoken]``).
  MAR takes them from its random order.
* **cheap step**: only the group's rows are recomputed (plus MaskGIT's class token; MAR's buffer is
  cached, as the official ``cache_buffer=True``); every other position attends through the recorded K/V
  (mode ``reuse``). The reserved tokens of this step are sampled from the refreshed outputs.
* MAR only: ``head_fast_ratio`` shortens the diffusion head on cheap steps to ⌊ratio·head_steps⌋ steps
  (official ``diff_fast_ratio``, 0.4 in its scripts). It is not feature reuse and is off by default.

The base sampler keeps its loop; it calls a small hook object (``hooks=``) that this wrapper supplies
(:meth:`mgen.samplers.maskgit.MaskGITSampler.sample`, :meth:`mgen.samplers.mar.MARSampler.sample`). All
randomness stays the base sampler's per-sample streams, so sample *i* does not depend on the batch size.
"""

from __future__ import annotations

from typing import Any

import torch

from mgen.errors import UserError
from mgen.nn import KVCache

FULL, CHEAP = "full", "cheap"


def recap_plan(num_steps: int, pre_full_steps: int, cache_steps: int) -> list[str]:
    """Kinds of the K steps: ``pre_full_steps`` full ones, then (full, ``cache_steps``× cheap) cycles,
    truncated at K (the official ``local_ntoken_schedules`` / ``iter_cnt > pre_full_iters - 1`` rule)."""
    kinds: list[str] = []
    t = 0
    while t < num_steps:
        kinds.append(FULL)
        t += 1
        if t > pre_full_steps:
            for _ in range(cache_steps):
                if t >= num_steps:
                    break
                kinds.append(CHEAP)
                t += 1
    return kinds


def _cycle_end(plan: list[str], t: int) -> int:
    """Index of the last cheap step that follows full step ``t`` (``t`` itself if none)."""
    end = t
    while end + 1 < len(plan) and plan[end + 1] == CHEAP:
        end += 1
    return end


def _priority(ranked: torch.Tensor, n: int, conf: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Confidence that makes the base sampler decode ``ranked``'s positions in their order: ranked
    positions get k − rank (≥ 1), other masked ones −1, visible ones keep their +∞ (small integers,
    exact in float32)."""
    b, k = ranked.shape
    pri = torch.full((b, n), -1.0, dtype=conf.dtype, device=conf.device)
    pri.scatter_(1, ranked, (k - torch.arange(k, device=conf.device)).to(conf.dtype).expand(b, k))
    return torch.where(masked, pri, conf)


class _MaskGITHooks:
    """Hooks of :meth:`MaskGITSampler.sample` that turn its steps into ReCAP's full/cheap steps."""

    def __init__(self, plan: list[str], counts: list[int], batch: int, stats: dict[str, Any]) -> None:
        self.plan, self.counts, self.batch, self.stats = plan, counts, batch, stats
        self.cache: KVCache | None = None
        self.group: torch.Tensor | None = None  # (B, n_group) positions in rank order
        self.last_logits: torch.Tensor | None = None

    def logits(self, sampler: Any, model: Any, codes: torch.Tensor, labels: torch.Tensor | None, t: int) -> torch.Tensor:
        if self.plan[t] == FULL:
            cache = self.cache = KVCache(mode="record") if _cycle_end(self.plan, t) > t else None
            self.stats["full"] += 1
            out = sampler.guided_logits(lambda c, l, d: model(c, l, d, cache=cache), codes, labels, t)
            self.last_logits = out
            return out
        cache, group, b = self.cache, self.group, self.batch
        assert cache is not None and group is not None
        cache.mode = "reuse"

        def cheap(c: torch.Tensor, l: torch.Tensor | None, d: torch.Tensor | None) -> torch.Tensor:
            cache.group = group.repeat(c.shape[0] // b, 1)
            return model(c, l, d, cache=cache)

        self.stats["cheap"] += 1
        part = sampler.guided_logits(cheap, codes, labels, t)  # (B, n_group, V), rows in group order
        return self.last_logits.scatter(1, group[..., None].expand(-1, -1, part.shape[-1]), part)

    def confidence(self, t: int, conf: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        n = conf.shape[1]
        if self.plan[t] == FULL:
            end = _cycle_end(self.plan, t)
            if end == t:  # no cheap step follows: the base sampler's own choice, nothing to reserve
                self.cache = self.group = None
                return conf
            n_masked = int(masked[0].sum())
            n_group = n_masked - self.counts[end]
            ranking = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
            self.group = ranking.argsort(dim=1, descending=True, stable=True)[:, :n_group]
        return _priority(self.group, n, conf, masked)


class _MARHooks:
    """Hooks of :meth:`MARSampler.sample` that turn its steps into ReCAP's full/cheap steps."""

    def __init__(self, plan: list[str], schedule: list[tuple[int, int, float]], seq_len: int, batch: int,
                 head_fast_ratio: float | None, stats: dict[str, Any]) -> None:
        self.plan, self.schedule, self.seq_len, self.batch = plan, schedule, seq_len, batch
        self.ratio, self.stats = head_fast_ratio, stats
        self.cache: KVCache | None = None
        self.group: torch.Tensor | None = None

    def condition_fn(self, model: Any, step: int, rank: torch.Tensor) -> Any:
        if self.plan[step] == FULL:
            end = _cycle_end(self.plan, step)
            self.stats["full"] += 1
            if end == step:
                self.cache = self.group = None
                return model.condition
            hi = self.seq_len if step == 0 else self.schedule[step - 1][1]  # masked before this step
            lo = self.schedule[end][1]  # masked after the cycle's last cheap step
            self.group = rank.argsort(dim=1)[:, lo:hi]  # the positions of ranks lo..hi-1
            cache = self.cache = KVCache(mode="record")
            return lambda tokens, mask, labels, drop=None: model.condition(tokens, mask, labels, drop, cache=cache)
        cache, group, b = self.cache, self.group, self.batch
        assert cache is not None and group is not None
        self.stats["cheap"] += 1

        def cheap(tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None,
                  drop: torch.Tensor | None = None) -> torch.Tensor:
            g = group.repeat(tokens.shape[0] // b, 1)
            cache.mode, cache.group = "reuse", g
            zg = model.condition(tokens, mask, labels, drop, cache=cache)
            z = zg.new_zeros(tokens.shape[0], self.seq_len, zg.shape[-1])
            return z.scatter(1, g[..., None].expand(-1, -1, zg.shape[-1]), zg)

        return cheap

    def head_steps(self, step: int, head_steps: int) -> int:
        if self.ratio is None or self.plan[step] == FULL:
            return head_steps
        return max(1, int(head_steps * self.ratio))  # official: int(num_sampling_steps * fast_ratio)


def _kind(base: Any, model: Any) -> str:
    from mgen.samplers.mar import MARSampler
    from mgen.samplers.maskgit import MaskGITSampler

    if isinstance(base, MaskGITSampler) and type(base) is MaskGITSampler:
        if not callable(getattr(model, "cache_rows", None)):
            raise UserError(f"ReCAP needs a generator that exposes its K/V cache; {type(model).__name__} does not")
        return "maskgit"
    if isinstance(base, MARSampler):
        if not callable(getattr(model, "condition_cached", None)):
            raise UserError(f"ReCAP needs a generator that exposes its K/V cache; {type(model).__name__} does not")
        return "mar"
    raise UserError(f"ReCAP works with MaskGIT and MAR generators (their samplers expose the K/V-cache hooks); "
                    f"{type(base).__name__} for {type(model).__name__} does not")


class ReCAP:
    """``ReCAP(base_sampler, pre_full_steps=0, cache_steps=1, head_fast_ratio=None)``: see the module doc.

    ``sample(model, ...)`` takes the base sampler's arguments and returns what it returns. The total step
    count is the base sampler's ``num_steps``; ``last_stats`` holds the number of full and cheap evaluations
    of the last call. Other attributes are read from the base sampler.
    """

    def __init__(self, base_sampler: Any, pre_full_steps: int = 0, cache_steps: int = 1,
                 head_fast_ratio: float | None = None) -> None:
        self.base = base_sampler
        self.pre_full_steps = pre_full_steps
        self.cache_steps = cache_steps
        self.head_fast_ratio = head_fast_ratio
        self.last_stats: dict[str, Any] = {}
        self.validate()

    def validate(self) -> None:
        if isinstance(self.cache_steps, bool) or not isinstance(self.cache_steps, int) or self.cache_steps < 0:
            raise UserError(f"ReCAP cache steps must be an integer >= 0, got {self.cache_steps!r}")
        if isinstance(self.pre_full_steps, bool) or not isinstance(self.pre_full_steps, int) or self.pre_full_steps < 0:
            raise UserError(f"ReCAP pre-full steps must be an integer >= 0, got {self.pre_full_steps!r}")
        steps = getattr(self.base, "num_steps", None)
        if steps is not None and self.pre_full_steps > steps:
            raise UserError(f"ReCAP pre-full steps ({self.pre_full_steps}) exceed the total steps ({steps})")
        if self.head_fast_ratio is not None and not 0.0 < float(self.head_fast_ratio) <= 1.0:
            raise UserError(f"ReCAP head fast ratio must be in (0, 1], got {self.head_fast_ratio}")

    def __getattr__(self, name: str) -> Any:
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __repr__(self) -> str:
        return (f"ReCAP({self.base!r}, pre_full_steps={self.pre_full_steps}, cache_steps={self.cache_steps}, "
                f"head_fast_ratio={self.head_fast_ratio})")

    @property
    def total_steps(self) -> int:
        """How many times ``sample`` calls its ``callback``: the base sampler's steps (full and cheap alike)."""
        own = getattr(self.base, "total_steps", None)
        return int(own if own is not None else self.base.num_steps)

    def plan(self, num_steps: int | None = None) -> list[str]:
        """``"full"`` / ``"cheap"`` for each of the K steps."""
        k = int(num_steps if num_steps is not None else self.base.num_steps)
        return recap_plan(k, self.pre_full_steps, self.cache_steps)

    def settings(self) -> dict[str, Any]:
        base = self.base.settings() if callable(getattr(self.base, "settings", None)) else {}
        return {**base, "sampler": "recap", "recap_pre_full_steps": self.pre_full_steps,
                "recap_cache_steps": self.cache_steps, "recap_head_fast_ratio": self.head_fast_ratio}

    def hooks(self, model: Any, batch_size: int) -> Any:
        """The hook object for one ``base.sample`` call on ``model`` with ``batch_size`` samples."""
        self.validate()
        kind = _kind(self.base, model)
        plan = self.plan()
        self.last_stats = {"full": 0, "cheap": 0, "plan": plan}
        if kind == "maskgit":
            from mgen.samplers.mask_schedules import mask_counts

            h, w = model.grid_size
            # the base sampler's own rounding rule where it has one (valeoai v1 rounds differently from the paper)
            own = getattr(self.base, "mask_counts", None)
            counts = own(h * w) if callable(own) else mask_counts(self.base.schedule, self.base.num_steps, h * w)
            return _MaskGITHooks(plan, counts, batch_size, self.last_stats)
        from mgen.samplers.mar import mask_schedule

        if self.head_fast_ratio is not None and float(self.head_fast_ratio) <= 0:
            raise UserError("head fast ratio must be > 0")
        return _MARHooks(plan, mask_schedule(model.seq_len, self.base.num_steps), model.seq_len, batch_size,
                         self.head_fast_ratio, self.last_stats)

    def check(self, model: Any) -> None:
        """A one-line :class:`UserError` unless this base sampler and ``model`` expose the K/V-cache hooks."""
        _kind(self.base, model)

    def sample(self, model: torch.nn.Module, *args: Any, callback: Any = None, **kwargs: Any) -> Any:
        """The base sampler's ``sample`` with ReCAP's full/cheap steps (same arguments — ``generator``,
        ``callback`` — same result). The callback runs after every step, full or cheap; a callback that changes
        the state inside a full/cheap cycle makes the cheap step decode the positions reserved at the full step
        as far as they are still masked."""
        labels = args[0] if args else kwargs.get("class_labels", kwargs.get("labels"))
        if labels is not None:
            b = int(torch.as_tensor(labels).reshape(-1).shape[0])
        elif kwargs.get("batch_size") is not None:
            b = int(kwargs["batch_size"])
        else:
            raise UserError("pass labels or a batch size")
        if _kind(self.base, model) == "maskgit" and self.base.num_steps > model.grid_size[0] * model.grid_size[1]:
            raise UserError(f"{self.base.num_steps} steps for only {model.grid_size[0] * model.grid_size[1]} tokens")
        if callback is not None:
            kwargs["callback"] = callback
        return self.base.sample(model, *args, hooks=self.hooks(model, b), **kwargs)


def wrap(sampler: Any, recap: Any) -> Any:
    """``sampler`` wrapped in :class:`ReCAP` according to ``recap``: None/False (unchanged), True (defaults),
    a mapping of ReCAP's keyword arguments, or a ready :class:`ReCAP` whose settings are reused."""
    if recap is None or recap is False:
        return sampler
    if isinstance(recap, ReCAP):
        return ReCAP(sampler, recap.pre_full_steps, recap.cache_steps, recap.head_fast_ratio)
    if recap is True:
        return ReCAP(sampler)
    if isinstance(recap, dict):
        known = {"pre_full_steps", "cache_steps", "head_fast_ratio"}
        bad = set(recap) - known
        if bad:
            raise UserError(f"unknown ReCAP settings {sorted(bad)}; allowed: {sorted(known)}")
        return ReCAP(sampler, **recap)
    raise UserError(f"recap must be None, True, a dict or a ReCAP, got {type(recap).__name__}")
