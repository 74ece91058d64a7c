"""``mgen bench joint-exact``: exact TV / KL of approximate joint samplers on a toy where every law is enumerable.

A toy masked diffusion LM over 4 tokens (+ the mask) writes strings of ``length`` = 8 tokens (4^8 = 65,536
strings). Every sampler measured here chooses its positions deterministically from the current partial string
(lowest entropy first) and draws tokens from the distributions it computes, so the probability it gives a whole
string is a product along one path of a tree; the tree is enumerated exactly (no sampling, no confidence
interval needed). Rows:

- ``exact``: one token per full forward (:class:`mgen.samplers.dlm.ExactSampler`, order ``entropy``) — the
  reference law p; its row is computed by the same enumeration as the others, and the Monte-Carlo check
  (``--mc``) measures the real sampler classes against the enumerated laws;
- ``marginal k``: k lowest-entropy positions per forward, sampled independently (JointSampler without a layer);
- ``eb γ``: the entropy-bounded set per forward (:class:`mgen.samplers.entropy_bound.EntropyBoundSampler`);
- ``adjust k``: ADJUST (JointSampler with a layer trained on the toy base, Bansal & Sanghavi 2025);
- ``eb+adjust γ``: EB with the layer refreshing the logits after every accepted token.

Cost: full forwards and layer passes per token (expected values under each law), and full-forward-equivalent
FLOPs per token = (forwards + r · passes) / length with r = FLOPs(layer pass) / FLOPs(full forward), counted by
:func:`mgen.bench.flops.count_flops`. Distances to p: TV, reverse KL(q ‖ p) (expectation over the method's own
strings) and forward KL(p ‖ q) (over exact strings). The toy data (``--structure``):

- ``copy`` (default): the first half uniform, the second half a copy of it (each copied token replaced by a
  uniform one with probability ``noise``), so positions i and i+4 are strongly dependent and sampling them together
  from marginals is wrong. With k = 4 the lowest-entropy picks of the first step are the (independent) first half
  and of the second step the (then determined) second half, so marginal k = 4 is almost exact there: no gap to
  close at that k.
- ``chain``: a sticky Markov chain, x_0 uniform and x_{i+1} = x_i except with probability ``noise`` a uniform
  token, so every pair of neighbours is dependent and any k > 1 positions sampled together from marginals are
  wrong, at every step (the several-step toy of the issue: k < length, a real gap at every k).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch

from mgen.bench.flops import count_flops
from mgen.bench.report import machine, write_frontier_chart, write_report
from mgen.models.dlm import DLMConfig, MaskedDiffusionLM, masked_diffusion_loss
from mgen.models.joint_sampler import JointSamplerLayer, JointTask, make_trajectories

V_REAL = 4
MASK = 4
TOY_ARCH = dict(vocab_size=5, dim=32, depth=2, num_heads=2, mlp_hidden=64, max_len=16, mask_id=MASK, eos_id=1,
                pad_id=0, seq_len=8)


STRUCTURES = ("copy", "chain")


def toy_data(n: int, length: int, noise: float, generator: torch.Generator, structure: str = "copy") -> torch.Tensor:
    """(n, length) strings: ``copy``, a uniform first half and a noisy copy of it as the second half; ``chain``, a
    sticky Markov chain (module docstring)."""
    if structure == "chain":
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0] = torch.randint(0, V_REAL, (n,), generator=generator)
        for i in range(1, length):
            fresh = torch.rand(n, generator=generator) < noise
            x[:, i] = torch.where(fresh, torch.randint(0, V_REAL, (n,), generator=generator), x[:, i - 1])
        return x
    if structure != "copy":
        raise ValueError(f"unknown toy structure {structure!r}; one of {STRUCTURES}")
    half = length // 2
    first = torch.randint(0, V_REAL, (n, half), generator=generator)
    second = first.clone()
    flip = torch.rand(n, half, generator=generator) < noise
    second[flip] = torch.randint(0, V_REAL, (int(flip.sum()),), generator=generator)
    return torch.cat([first, second], 1)


def train_base(steps: int, length: int, noise: float, seed: int, batch: int = 256,
               structure: str = "copy") -> MaskedDiffusionLM:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MaskedDiffusionLM(DLMConfig(**TOY_ARCH))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = masked_diffusion_loss(model, toy_data(batch, length, noise, g, structure), MASK, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_layer(base: MaskedDiffusionLM, k: int, steps: int, trajectories: int, length: int, seed: int,
                batch: int = 128) -> JointSamplerLayer:
    g = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    windows = torch.zeros(trajectories, 0, dtype=torch.long)
    final, order = make_trajectories(base, windows, 0, length, g, batch_size=512)
    layer = JointSamplerLayer(base.cfg)
    task = JointTask(layer, base, k)
    opt = torch.optim.AdamW(layer.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        idx = torch.randint(0, trajectories, (batch,), generator=g)
        loss = task.loss(layer, (final[idx], order[idx]), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer.eval()


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return torch.special.entr(logits.double().softmax(-1)).sum(-1)


@dataclass
class Law:
    """An enumerated law over all strings (index = base-4 code, first position most significant)."""

    probs: torch.Tensor  # (4^L,) float64
    forwards: float  # expected full forwards per string
    passes: float  # expected layer passes per string


@torch.no_grad()
def enumerate_law(base: MaskedDiffusionLM, length: int, k: int | None = None, gamma: float | None = None,
                  layer: JointSamplerLayer | None = None, chunk: int = 8192) -> Law:
    """The exact law of one sampler (k tokens per forward, or the EB bound γ; ``layer`` for ADJUST)."""
    n_all = V_REAL ** length
    probs = torch.zeros(n_all, dtype=torch.float64)
    weights = V_REAL ** torch.arange(length - 1, -1, -1)
    forwards = passes = 0.0
    cap = k if k is not None else length
    frontier_x = torch.full((1, length), MASK, dtype=torch.long)
    frontier_m = torch.ones(1, dtype=torch.float64)

    def full(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs_l, outs_h = [], []
        for s in range(0, x.shape[0], chunk):
            if layer is not None:
                lg, h = base.forward_with_hidden(x[s:s + chunk])
                outs_h.append(h)
            else:
                lg = base(x[s:s + chunk])
            outs_l.append(lg.float())
        return torch.cat(outs_l), (torch.cat(outs_h) if layer is not None else None)

    def refresh(h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs_l, outs_h = [], []
        for s in range(0, x.shape[0], chunk):
            lg, hh = layer(base, h[s:s + chunk], x[s:s + chunk])
            outs_l.append(lg.float())
            outs_h.append(hh)
        return torch.cat(outs_l), torch.cat(outs_h)

    while frontier_x.shape[0]:
        forwards += float(frontier_m.sum())
        logits, hid = full(frontier_x)
        x, m = frontier_x, frontier_m
        taken = torch.zeros(x.shape[0], dtype=torch.long)
        h_sum = torch.zeros(x.shape[0], dtype=torch.float64)
        h_max = torch.zeros(x.shape[0], dtype=torch.float64)
        next_x, next_m = [], []
        while x.shape[0]:
            masked = x == MASK
            ent = _entropy(logits).masked_fill(~masked, float("inf"))
            hj, pos = ent.min(-1)  # first lowest-entropy masked position (argmin ties → lowest index)
            has = masked.any(-1)
            go = has & (taken < cap)
            if gamma is not None:
                go = go & ((taken == 0) | (h_sum + hj - torch.maximum(h_max, hj) <= gamma))
            stop = ~go
            if bool(stop.any()):  # the step ends here: decoded strings are leaves, the others the next frontier
                done = stop & ~has
                if bool(done.any()):
                    probs.index_add_(0, (x[done] * weights).sum(-1), m[done])
                more = stop & has
                next_x.append(x[more])
                next_m.append(m[more])
            if not bool(go.any()):
                break
            x, m, logits, pos, hj = x[go], m[go], logits[go], pos[go], hj[go]
            taken, h_sum, h_max = taken[go], h_sum[go], h_max[go]
            hid = hid[go] if hid is not None else None
            p_tok = logits[torch.arange(x.shape[0]), pos].double().softmax(-1)[:, :V_REAL]  # mask prob is 0
            # four children per state
            n = x.shape[0]
            x = x.repeat_interleave(V_REAL, 0)
            toks = torch.arange(V_REAL).repeat(n)
            rows = torch.arange(x.shape[0])
            pos = pos.repeat_interleave(V_REAL)
            x[rows, pos] = toks
            m = m.repeat_interleave(V_REAL) * p_tok.reshape(-1)
            taken = taken.repeat_interleave(V_REAL) + 1
            hj = hj.repeat_interleave(V_REAL)
            h_sum = h_sum.repeat_interleave(V_REAL) + hj
            h_max = torch.maximum(h_max.repeat_interleave(V_REAL), hj)
            logits = logits.repeat_interleave(V_REAL, 0)
            keep = m > 0
            x, m, logits, taken, h_sum, h_max = x[keep], m[keep], logits[keep], taken[keep], h_sum[keep], h_max[keep]
            if layer is not None:
                hid = hid.repeat_interleave(V_REAL, 0)[keep]
                # a pass only where the step may take another token (as the samplers: skipped after the k-th)
                want = (x == MASK).any(-1) & (taken < cap)
                if bool(want.any()):
                    passes += float(m[want].sum())
                    lg, hh = refresh(hid[want], x[want])
                    logits[want], hid[want] = lg, hh
        frontier_x = torch.cat(next_x) if next_x else torch.zeros(0, length, dtype=torch.long)
        frontier_m = torch.cat(next_m) if next_m else torch.zeros(0, dtype=torch.float64)
    return Law(probs, forwards, passes)


def distances(q: torch.Tensor, p: torch.Tensor) -> dict[str, float]:
    """TV, reverse KL(q‖p) and forward KL(p‖q) in nats (strings a law gives 0 contribute 0 / ∞ as they must)."""
    tv = 0.5 * float((q - p).abs().sum())
    qm, pm = q > 0, p > 0
    rkl = float((q[qm] * (q[qm].log() - p[qm].log())).sum()) if bool((~pm & qm).sum() == 0) else math.inf
    fkl = float((p[pm] * (p[pm].log() - q[pm].log())).sum()) if bool((~qm & pm).sum() == 0) else math.inf
    return {"tv": tv, "kl_q_p": rkl, "kl_p_q": fkl}


def layer_cost_ratio(base: MaskedDiffusionLM, layer: JointSamplerLayer, length: int) -> float:
    """r = FLOPs of one layer pass / FLOPs of one full forward (matmul-type ops, batch 1)."""
    x = torch.full((1, length), MASK, dtype=torch.long)
    with torch.no_grad():
        f_full = count_flops(lambda: base.forward_with_hidden(x))
        _, h = base.forward_with_hidden(x)
        f_layer = count_flops(lambda: layer(base, h, x))
    return f_layer / f_full


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces a run (``python -m mgen.bench.joint_exact`` with every option spelled out)."""
    opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(vars(args).items()) if k != "out")
    return f"python -m mgen.bench.joint_exact {opts} --out {args.out or ''}".strip()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=8)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--structure", choices=STRUCTURES, default="copy",
                   help="toy data: copy (second half copies the first) or chain (sticky Markov chain)")
    p.add_argument("--base-steps", type=int, default=1500)
    p.add_argument("--layer-steps", type=int, default=600)
    p.add_argument("--trajectories", type=int, default=4096)
    p.add_argument("--layer-k", type=int, default=4, help="tokens per step the ADJUST layer is trained for")
    p.add_argument("--ks", default="2,4,8")
    p.add_argument("--gammas", default="0.05,0.2,0.5,1.0,2.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny model: 1 is fastest)")
    p.add_argument("--out", default="benchmarks/joint_exact")


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(max(1, int(args.threads)))
    t0 = time.time()
    L = args.length
    base = train_base(args.base_steps, L, args.noise, args.seed, structure=args.structure)
    t_base = time.time() - t0
    layer = train_layer(base, args.layer_k, args.layer_steps, args.trajectories, L, args.seed)
    t_layer = time.time() - t0 - t_base
    r = layer_cost_ratio(base, layer, L)
    exact = enumerate_law(base, L, k=1)
    rows: list[dict[str, Any]] = []

    def row(name: str, setting: Any, law: Law) -> None:
        d = distances(law.probs, exact.probs)
        rows.append({"method": name, "setting": setting, "tokens_per_forward": L / law.forwards,
                     "forwards_per_token": law.forwards / L, "passes_per_token": law.passes / L,
                     "ffe_flops_per_token": (law.forwards + r * law.passes) / L, **d,
                     "mass": float(law.probs.sum())})

    row("exact", "k=1", exact)
    ks = [int(v) for v in str(args.ks).split(",") if v]
    gammas = [float(v) for v in str(args.gammas).split(",") if v]
    for k in ks:
        row("marginal", f"k={k}", enumerate_law(base, L, k=k))
        row("adjust", f"k={k}", enumerate_law(base, L, k=k, layer=layer))
    for g in gammas:
        row("eb", f"γ={g}", enumerate_law(base, L, gamma=g))
        row("eb+adjust", f"γ={g}", enumerate_law(base, L, gamma=g, layer=layer))
    marg = {r_["setting"]: r_["tv"] for r_ in rows if r_["method"] == "marginal"}
    for r_ in rows:
        if r_["method"] == "adjust" and marg.get(r_["setting"]):
            r_["tv_gap_closed"] = 1 - r_["tv"] / marg[r_["setting"]]
    data = toy_data(20000, L, args.noise, torch.Generator().manual_seed(args.seed + 7), args.structure)
    p_data = torch.zeros(V_REAL ** L, dtype=torch.float64)
    p_data.index_add_(0, (data * V_REAL ** torch.arange(L - 1, -1, -1)).sum(-1),
                      torch.full((data.shape[0],), 1 / data.shape[0], dtype=torch.float64))
    result = {"meta": {"what": "exact TV/KL to the exact sampler's law on an enumerable toy (4 tokens, "
                               f"length {L}: {V_REAL ** L} strings)", "layer_cost_ratio_r": r,
                       "layer_trained_for_k": args.layer_k, "base_steps": args.base_steps,
                       "layer_steps": args.layer_steps, "trajectories": args.trajectories, "noise": args.noise,
                       "structure": args.structure,
                       "seed": args.seed, "command": command_line(args), "exact_tv_to_empirical_data": 0.5 * float((exact.probs - p_data).abs().sum()),
                       "train_seconds": {"base": round(t_base, 1), "layer": round(t_layer, 1)},
                       "seconds": round(time.time() - t0, 1), "machine": machine()},
              "rows": rows}
    if args.out:
        write_report(result, args.out, "joint_exact", title="ADJUST / EB on an exact toy (mgen bench joint-exact)")
        _plot(rows, args.out)
    return result


def _plot(rows: list[dict[str, Any]], out: str) -> None:
    """KL(q‖p)-vs-cost frontier (full-forward-equivalent FLOPs per token), when matplotlib is installed."""
    write_frontier_chart(rows, Path(out) / "joint_exact_frontier.png", "KL(q ‖ p_exact) + 1e-6 (nats)",
                         y_offset=1e-6, log_y=True, size=(5, 3.5))


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m mgen.bench.joint_exact", description=__doc__.splitlines()[0])
    add_arguments(_p)
    run(_p.parse_args())
