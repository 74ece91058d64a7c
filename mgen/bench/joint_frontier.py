"""``mgen bench joint-frontier``: KL-vs-FLOPs frontier of marginal, EB, ADJUST and EB+ADJUST on dlm-text.

Every sampler here picks positions deterministically from the current state (lowest entropy first) and draws
tokens from the distributions it computes, so a generated string has one path and its probability is the
product along it. For each of ``--prompts`` held-out prompts (dlm-text's held-out split, 16 tokens) and each
method q:

- reverse KL(q ‖ p): strings x ~ q (the method's own samples, its log q(x) recorded while sampling), log p(x)
  by replaying the exact rule on x (:func:`mgen.bench.joint.exact_log_prob`, ``gen_length`` full forwards);
- forward KL(p ‖ q): strings x ~ p (exact one-token-per-forward samples), log q(x) by replaying the method's rule
  on x (:func:`mgen.bench.joint.replay_log_q` for marginal / ADJUST, ``teacher_tokens`` of
  :class:`mgen.samplers.entropy_bound.EntropyBoundSampler` for EB / EB+ADJUST);
- the exact row is measured the same way (its samples' recorded log q against the replayed log p);
- cost: full forwards and layer passes per generated token (counted while sampling) and full-forward-equivalent
  FLOPs per token = forwards + r · passes, r = FLOPs(layer pass) / FLOPs(full forward) counted by
  :func:`mgen.bench.flops.count_flops` at the benchmark's shape.

KLs are per sample (nats per string of ``gen_length`` tokens), means over prompts with 95% bootstrap intervals
(``--bootstrap`` resamples of the prompts).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mgen.bench.flops import count_flops
from mgen.bench.joint import exact_log_prob, replay_log_q
from mgen.bench.report import machine, write_frontier_chart, write_report
from mgen.errors import UserError
from mgen.train.data import text_windows as build_text_data
from mgen.models.joint_sampler import JointSamplerLayer, load_base
from mgen.samplers.entropy_bound import EntropyBoundSampler
from mgen.samplers.joint import JointSampler


def bootstrap_ci(values: torch.Tensor, n: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` over ``n`` resamples."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, values.numel(), (n, values.numel()), generator=g)
    means = values.double()[idx].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def _fmt_ci(ci: tuple[float, float]) -> list[float]:
    return [round(ci[0], 4), round(ci[1], 4)]


def layer_cost_ratio(base: torch.nn.Module, layer: JointSamplerLayer, length: int) -> float:
    x = torch.full((1, length), base.mask_id, dtype=torch.long)
    with torch.no_grad():
        full = count_flops(lambda: base.forward_with_hidden(x))
        _, h = base.forward_with_hidden(x)
        one = count_flops(lambda: layer(base, h, x))
    return one / full


METHODS = ("exact", "marginal", "adjust", "eb", "eb+adjust")


def _methods(ks: list[int], gammas: list[float],
             methods: tuple[str, ...] = METHODS) -> list[tuple[str, str, dict[str, Any]]]:
    out = [("exact", "k=1", {"k": 1, "layer": False})]
    for k in ks:
        out += [("marginal", f"k={k}", {"k": k, "layer": False}), ("adjust", f"k={k}", {"k": k, "layer": True})]
    for g in gammas:
        out += [("eb", f"γ={g}", {"gamma": g, "layer": False}), ("eb+adjust", f"γ={g}", {"gamma": g, "layer": True})]
    return [m for m in out if m[0] in methods]


@torch.no_grad()
def run_frontier(base: torch.nn.Module, layer: JointSamplerLayer, prompts: torch.Tensor, gen_length: int,
                 ks: list[int], gammas: list[float], seed: int, batch_size: int, bootstrap: int,
                 log: Callable[[str], None] = lambda s: None,
                 methods: tuple[str, ...] = METHODS) -> list[dict[str, Any]]:
    """The frontier's rows. ``methods`` keeps a subset of :data:`METHODS` (every row's seeds depend only on the
    chunk, so a subset's rows equal the full run's: the layer-free rows can run while the layer trains)."""
    p_len = prompts.shape[1]
    chunks = [prompts[s:s + batch_size] for s in range(0, prompts.shape[0], batch_size)]

    def sample(spec: dict[str, Any], chunk: torch.Tensor, g: torch.Generator, teacher: torch.Tensor | None = None):
        lay = layer if spec["layer"] else None
        if "gamma" in spec:
            s = EntropyBoundSampler(gen_length=gen_length, entropy_bound=spec["gamma"], temperature=1.0)
            x = s.sample(base, chunk, generator=g, layer=lay, teacher_tokens=teacher)
            return x, s.log_q.clone(), (s.row_forwards, s.row_passes)  # per row: rows stop at different steps
        else:
            s = JointSampler(gen_length=gen_length, tokens_per_step=spec["k"], temperature=1.0)
            x = s.sample(base, chunk, layer=lay, generator=g)
        return x, s.log_q.clone(), s.stats  # every row uses the same forwards and passes

    # exact samples (for every forward KL) once
    exact_x = [sample({"k": 1, "layer": False}, c, torch.Generator().manual_seed(seed + i))[0]
               for i, c in enumerate(chunks)]
    exact_lp = torch.cat([exact_log_prob(base, x, p_len) for x in exact_x])
    rows = []
    for name, setting, spec in _methods(ks, gammas, methods):
        t0 = time.perf_counter()
        lq_own, lp_own, fwd, passes = [], [], 0, 0
        for i, c in enumerate(chunks):
            x, lq, stats = sample(spec, c, torch.Generator().manual_seed(seed + 1000 + i))
            lq_own.append(lq)
            lp_own.append(exact_log_prob(base, x, p_len))
            fwd += float(stats[0].sum()) if isinstance(stats, tuple) else stats.full_forwards * c.shape[0]
            passes += float(stats[1].sum()) if isinstance(stats, tuple) else stats.sampler_passes * c.shape[0]
        lq_own, lp_own = torch.cat(lq_own), torch.cat(lp_own)
        # forward KL: the method's log-probability of the exact strings
        lq_exact = []
        for x in exact_x:
            if "gamma" in spec:
                _, lq, _ = sample(spec, x[:, :p_len], torch.Generator().manual_seed(0), teacher=x[:, p_len:])
            else:
                lq = replay_log_q(base, layer if spec["layer"] else None, x, p_len, spec["k"])
            lq_exact.append(lq)
        lq_exact = torch.cat(lq_exact)
        rkl = lq_own - lp_own
        fkl = exact_lp - lq_exact
        n_tok = prompts.shape[0] * gen_length
        row = {"method": name, "setting": setting, "forwards_per_token": fwd / n_tok,
               "passes_per_token": passes / n_tok, "kl_q_p": float(rkl.mean()),
               "kl_q_p_ci": _fmt_ci(bootstrap_ci(rkl, bootstrap, seed)), "kl_p_q": float(fkl.mean()),
               "kl_p_q_ci": _fmt_ci(bootstrap_ci(fkl, bootstrap, seed + 1)), "nll_exact_of_own": float(-lp_own.mean() / gen_length),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        log(f"{name} {setting}: KL(q||p) {row['kl_q_p']:.3f} KL(p||q) {row['kl_p_q']:.3f} "
            f"fwd/tok {row['forwards_per_token']:.3f} ({row['seconds']} s)")
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="dlm-text")
    p.add_argument("--joint-sampler", default="joint-dlm-text")
    p.add_argument("--prompts", type=int, default=256, help="held-out prompts (16 tokens each)")
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--ks", default="2,4,8")
    p.add_argument("--gammas", default="1,3,6")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", default=",".join(METHODS),
                   help="the rows to measure, a subset of " + ",".join(METHODS) + " (merge subsets with --merge)")
    p.add_argument("--out", default="benchmarks/joint_frontier")
    p.add_argument("--merge", nargs="+", metavar="RUN.json",
                   help="instead of sampling: merge the JSON results of runs that split the methods between processes")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "merge", None):
        return merge_main(args.merge, args.out)
    torch.set_num_threads(max(1, int(args.threads)))
    ks = [int(v) for v in str(args.ks).split(",") if v]
    gammas = [float(v) for v in str(args.gammas).split(",") if v]
    methods = tuple(v for v in str(args.methods).split(",") if v)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UserError(f"--methods takes a comma list of {', '.join(METHODS)}; got {args.methods!r}")
    if args.prompts < 2 or args.gen_length < 1 or any(not 1 <= k <= args.gen_length for k in ks) or \
            any(g <= 0 for g in gammas):
        raise UserError("need --prompts >= 2, --gen-length >= 1, --ks in 1..gen-length, --gammas > 0")
    base, entry = load_base(args.model)
    if entry is None:
        raise UserError("--model must be a registered dlm model (its held-out split gives the prompts)")
    layer = JointSamplerLayer.from_pretrained(args.joint_sampler)
    layer.check_base(base)
    _, held, _ = build_text_data(entry, base.cfg.seq_len)
    if held.shape[0] < args.prompts:
        raise UserError(f"the held-out split has {held.shape[0]} windows, fewer than --prompts {args.prompts}")
    prompts = held[: args.prompts, :16]
    t0 = time.perf_counter()
    r = layer_cost_ratio(base, layer, 16 + args.gen_length)
    rows = run_frontier(base, layer, prompts, args.gen_length, ks, gammas, args.seed, args.batch_size,
                        args.bootstrap, log=lambda s: print(s, flush=True), methods=methods)
    for row in rows:
        row["ffe_flops_per_token"] = row["forwards_per_token"] + r * row["passes_per_token"]
    opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(vars(args).items()) if k != "merge")
    result = {"meta": {"what": "sequence KL to the exact (one token per forward, lowest entropy first) law of "
                               f"{args.model}, nats per {args.gen_length}-token string, mean over prompts "
                               "[95% bootstrap CI]", "model": args.model, "joint_sampler": args.joint_sampler,
                       "prompts": int(prompts.shape[0]), "gen_length": args.gen_length, "layer_cost_ratio_r": r,
                       "command": f"python -m mgen.bench.joint_frontier {opts}",
                       "seconds": round(time.perf_counter() - t0, 1), "machine": machine()},
              "rows": rows}
    if args.out:
        write_report(result, args.out, "joint_frontier", title=f"KL vs FLOPs frontier on {args.model} (exact KLs by "
                     "path replay)")
        _plot(rows, args.out)
    return result


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One frontier from runs that split the methods between processes (same model, layer, prompts, length and
    seed; e.g. ``--ks 2,4 --gammas=`` in one and ``--ks= --gammas 8`` in another): their rows, the exact row once."""
    if not parts:
        raise UserError("nothing to merge")
    keys = ("model", "joint_sampler", "prompts", "gen_length", "layer_cost_ratio_r")
    first = parts[0]["meta"]
    for part in parts[1:]:
        diff = [k for k in keys if part["meta"].get(k) != first.get(k)]
        if diff:
            raise UserError(f"cannot merge frontier runs that differ in {', '.join(diff)}")
    rows, seen = [], set()
    for part in parts:
        for row in part["rows"]:
            key = (row["method"], row["setting"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    meta = {**first, "command": [p["meta"]["command"] for p in parts],
            "seconds": max(p["meta"]["seconds"] for p in parts),
            "note": f"{len(parts)} processes in parallel, one method subset each; seconds: the longest"}
    return {"meta": meta, "rows": rows}


def merge_main(paths: list[str], out: str) -> dict[str, Any]:
    """``--merge RUN.json …``: read the runs' JSON results, write the merged report and chart to ``out``."""
    import json

    parts = []
    for path in paths:
        try:
            parts.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read frontier result {path}: {exc}") from None
        if not isinstance(parts[-1], dict) or "rows" not in parts[-1] or "meta" not in parts[-1]:
            raise UserError(f"{path} is not a joint-frontier result (no meta/rows)")
    result = merge_results(parts)
    model = result["meta"].get("model", "")
    write_report(result, out, "joint_frontier", title=f"KL vs FLOPs frontier on {model} (exact KLs by path replay)")
    _plot(result["rows"], out)
    return result


def _plot(rows: list[dict[str, Any]], out: str) -> None:
    write_frontier_chart(rows, Path(out) / "joint_frontier.png", "KL(q ‖ p_exact), nats per string",
                         ci_key="kl_q_p_ci", size=(5.5, 3.8))


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m mgen.bench.joint_frontier", description=__doc__.splitlines()[0])
    add_arguments(_p)
    run(_p.parse_args())
