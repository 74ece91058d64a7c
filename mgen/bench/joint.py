"""Joint vs marginal sampling benchmark for a masked diffusion LM and its ADJUST layer (``mgen bench joint``).

(Moved here from ``mgen.pipelines.dlm_bench``: benchmarks live in :mod:`mgen.bench`, and write their reports
through :func:`mgen.bench.report.write_report`.)

For k tokens per full forward, three samplers decode the same prompts with the same seeds at temperature 1:
``marginal`` (k picks from one forward's marginals), ``adjust`` (k picks, the sampler layer refreshing the logits
between them; Bansal & Sanghavi 2025) and ``exact`` (one token per full forward, lowest entropy first).

Measured, per method:
- ``kl_to_exact``: a Monte-Carlo estimate of the *sequence-level* KL(q ‖ p_exact) in nats per sample, where q is
  the method's own distribution over the generated string and p_exact the exact sampler's. Both samplers
  choose positions deterministically from the current state, so each string has one path and its probability
  is the product of the per-token probabilities along that path: log q(x) is recorded while sampling and
  log p_exact(x) is computed by replaying the exact rule on x (gen_length full forwards). E_q[log q − log p] ≥ 0
  and is 0 for the exact sampler itself (a check).
- ``nll_exact``: −log p_exact(x) / gen_length, the base model's NLL (nats/token) of the generated text under its
  own exact decoding order.
- cost: full forwards and sampler passes per generated token, and tokens/s (wall clock, this machine).
``gap_closed`` = (KL_marginal − KL_adjust) / KL_marginal.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from mgen.bench.report import machine
from mgen.bench.report import write_report as write_bench_report
from mgen.errors import UserError
from mgen.models.dlm import DLMConfig, DLMTask, MaskedDiffusionLM
from mgen.train.data import text_windows as build_text_data
from mgen.models.joint_sampler import JointSamplerLayer, JointTask, load_base, make_trajectories
from mgen.samplers.dlm import ExactSampler, model_logits
from mgen.samplers.joint import JointSampler, _no_mask
from mgen.train.trainer import TrainConfig, Trainer


@torch.no_grad()
def exact_log_prob(model: torch.nn.Module, sequences: torch.Tensor, prompt_len: int, temperature: float = 1.0
                   ) -> torch.Tensor:
    """log p_exact(x) per row: replay "lowest entropy first, one per forward" on the generated part of x."""
    b, n = sequences.shape
    x = sequences.clone()
    x[:, prompt_len:] = model.mask_id
    attn = (sequences != model.pad_id).long()
    attn[:, prompt_len:] = 1
    out = torch.zeros(b, dtype=torch.float64)
    for _ in range(n - prompt_len):
        logits = model_logits(model, x, attn).double() / temperature
        lp = logits.log_softmax(-1)
        ent = torch.special.entr(lp.exp()).sum(-1)
        ent = ent.masked_fill(x != model.mask_id, float("inf"))
        pos = ent.argmin(1)
        rows = torch.arange(b)
        tok = sequences[rows, pos]
        out += lp[rows, pos, tok]
        x[rows, pos] = tok
    return out


@torch.no_grad()
def text_features(model: torch.nn.Module, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """MAUVE features from our own model (no feature model can be downloaded): the mean of the base model's final
    hidden states over the generated tokens, the whole clean sequence as input."""
    attn = (sequences != model.pad_id).long()
    attn[:, prompt_len:] = 1
    h = model.hidden_states(sequences, None if bool(attn.all()) else attn)
    return h[:, prompt_len:].double().mean(1).float()


def mauve_score(p_feats: torch.Tensor, q_feats: torch.Tensor, seed: int = 0) -> float | None:
    """MAUVE (Pillutla et al. 2021, ``mauve-text``) of q against p on given features; None when not installed."""
    try:
        import mauve  # optional dependency (mauve-text)
    except ImportError:
        return None
    n = min(len(p_feats), len(q_feats))
    out = mauve.compute_mauve(p_features=p_feats.numpy(), q_features=q_feats.numpy(), seed=seed, verbose=False,
                              num_buckets=max(2, n // 10), device_id=-1)
    return float(out.mauve)


def run_joint_benchmark(model: torch.nn.Module, layer: torch.nn.Module, prompts: Sequence[Sequence[int]],
                        ks: Sequence[int] = (2, 4, 8), gen_length: int = 32, seed: int = 0,
                        batch_size: int = 32) -> dict[str, Any]:
    """The numbers described in the module docstring, as a JSON-able dict."""
    results: dict[str, Any] = {"gen_length": gen_length, "num_prompts": len(prompts), "ks": list(ks), "rows": []}

    def run(name: str, k: int) -> dict[str, Any]:
        seqs, logq, ff, sp = [], [], 0, 0
        t0 = time.perf_counter()
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s:s + batch_size]
            g = torch.Generator().manual_seed(seed + s)
            if name == "exact":
                smp = ExactSampler(gen_length=gen_length, order="entropy", temperature=1.0)
                x = smp.sample(model, chunk, generator=g)
                lq = None
            else:
                smp = JointSampler(gen_length=gen_length, tokens_per_step=k, temperature=1.0)
                x = smp.sample(model, chunk, layer=layer if name == "adjust" else None, generator=g)
                lq = smp.log_q
            ff += smp.stats.full_forwards * len(chunk)  # per-sample forwards (stats count batched ones)
            sp += smp.stats.sampler_passes * len(chunk)
            seqs.append(x)
            logq.append(lq)
        wall = time.perf_counter() - t0
        lp = torch.cat([exact_log_prob(model, x, x.shape[1] - gen_length) for x in seqs])
        lq = lp if logq[0] is None else torch.cat(logq)
        total = len(prompts) * gen_length
        allx = torch.cat(seqs)
        feats = text_features(model, allx, allx.shape[1] - gen_length)
        return {"method": name, "k": k, "kl_to_exact": float((lq - lp).mean()), "_features": feats,
                "kl_stderr": float((lq - lp).std() / len(prompts) ** 0.5),
                "nll_exact": float(-lp.mean() / gen_length),
                "full_forwards_per_token": ff / total, "sampler_passes_per_token": sp / total,
                "tokens_per_s": total / wall, "seconds": wall,
                "sequences": [x.tolist() for x in seqs]}

    exact = run("exact", 1)
    results["rows"].append(exact)
    ref = exact["_features"]
    for k in ks:
        marg = run("marginal", k)
        adj = run("adjust", k)
        gap = (marg["kl_to_exact"] - adj["kl_to_exact"]) / marg["kl_to_exact"] if marg["kl_to_exact"] > 0 else None
        adj["gap_closed"] = gap
        # cost: wall clock per token relative to marginal (same run, same machine), and model-FLOP-free counts
        adj["cost_vs_marginal"] = marg["tokens_per_s"] / adj["tokens_per_s"]
        for r in (marg, adj):
            r["mauve"] = mauve_score(ref, r["_features"], seed)
        if marg.get("mauve") is not None:
            adj["gap_closed_mauve"] = ((adj["mauve"] - marg["mauve"]) / (1 - marg["mauve"])
                                       if marg["mauve"] < 1 else None)
        results["rows"] += [marg, adj]
    for r in results["rows"]:
        r.pop("_features", None)
    return results


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| method | k | KL(q‖p_exact) nats/sample | MAUVE vs exact | NLL nats/token | full fwd/token "
             "| sampler passes/token | tokens/s | gap closed (KL) | gap closed (MAUVE) | time vs marginal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return "" if v is None else f"{100 * v:.0f}%"

    for r in results["rows"]:
        mv = r.get("mauve")
        cost = r.get("cost_vs_marginal")
        lines.append(f"| {r['method']} | {r['k']} | {r['kl_to_exact']:.2f} ± {r['kl_stderr']:.2f} "
                     f"| {'' if mv is None else f'{mv:.3f}'} | {r['nll_exact']:.3f} "
                     f"| {r['full_forwards_per_token']:.3f} | {r['sampler_passes_per_token']:.3f} | {r['tokens_per_s']:.1f} "
                     f"| {pct(r.get('gap_closed'))} | {pct(r.get('gap_closed_mauve'))} "
                     f"| {'' if cost is None else f'{cost:.2f}x'} |")
    toy = results.get("toy")
    if toy:
        lines += ["", f"Exact distances on the small-vocabulary configuration (k={toy['k']}, {toy['strings']} strings "
                  "enumerated):", "", "| method | TV to exact joint | KL(q‖p) nats |", "|---|---|---|",
                  f"| marginal | {toy['marginal_tv']:.4f} | {toy['marginal_kl']:.4f} |",
                  f"| adjust | {toy['adjust_tv']:.4f} | {toy['adjust_kl']:.4f} |",
                  "", f"gap closed: {pct(toy['gap_closed_tv'])} (TV), {pct(toy['gap_closed_kl'])} (KL)"]
    return "\n".join(lines)


ROW_COLUMNS = ("method", "k", "kl_to_exact", "kl_stderr", "mauve", "nll_exact", "full_forwards_per_token",
               "sampler_passes_per_token", "tokens_per_s", "gap_closed", "gap_closed_mauve", "cost_vs_marginal")


def write_report(results: dict[str, Any], out_dir: str | Path, name: str = "joint_rows") -> Path:
    """The rows (without the sampled sequences) and the run's settings through the one report writer
    (:func:`mgen.bench.report.write_report`): ``out_dir/joint_rows.json`` + ``.md``; returns the markdown path."""
    rows = [{k: v for k, v in r.items() if k != "sequences"} for r in results["rows"]]
    meta = {k: v for k, v in results.items() if k != "rows"}
    meta.setdefault("machine", machine())
    _, md = write_bench_report({"meta": meta, "rows": rows}, out_dir, name,
                               title="mgen bench joint: ADJUST vs marginal vs exact (KL to the exact sampler)",
                               columns=ROW_COLUMNS)
    return md


@torch.no_grad()
def replay_log_q(model: torch.nn.Module, layer: torch.nn.Module | None, sequences: torch.Tensor, prompt_len: int,
                 k: int, temperature: float = 1.0) -> torch.Tensor:
    """log q(x) of :class:`JointSampler` (layer or marginal) for given strings: its path replayed on x."""
    b, n = sequences.shape
    x = sequences.clone()
    x[:, prompt_len:] = model.mask_id
    out = torch.zeros(b, dtype=torch.float64)
    rows = torch.arange(b)
    done, gen = 0, n - prompt_len
    while done < gen:
        if layer is not None:
            logits, h = model.forward_with_hidden(x)
        else:
            logits = model(x)
        logits = _no_mask(logits, model.mask_id)
        for j in range(k):
            if done >= gen:
                break
            lp = (logits.double() / temperature).log_softmax(-1)
            ent = torch.special.entr(logits.double().softmax(-1)).sum(-1).masked_fill(x != model.mask_id, float("inf"))
            pos = ent.argmin(1)
            tok = sequences[rows, pos]
            out += lp[rows, pos, tok]
            x[rows, pos] = tok
            done += 1
            if layer is not None and j < k - 1 and done < gen:
                logits, h = layer(model, h, x)
                logits = _no_mask(logits, model.mask_id)
    return out


def toy_joint_experiment(k: int = 4, base_steps: int = 300, layer_steps: int = 300, seed: int = 0,
                         out_dir: str | Path = "/tmp/mgen-toy-joint") -> dict[str, Any]:
    """Exact distances on a small vocabulary, where every string can be enumerated.

    Data: a 1-token prompt then 4 tokens over {3, 4, 5, 6}: the first uniform, each next one a copy of the
    previous with probability 0.8, else uniform. A tiny base model is trained on it, then its ADJUST layer on its
    own exact trajectories. Over all V^4 strings (V = the full vocabulary, specials included) we compute the exact
    joint of the exact sampler p, of marginal k-per-forward sampling and of ADJUST, and report TV and KL(q ‖ p).
    """
    g = torch.Generator().manual_seed(seed)
    n, vocab, gen = 4096, 7, 4
    seqs = torch.empty(n, gen, dtype=torch.long)
    seqs[:, 0] = torch.randint(3, 7, (n,), generator=g)
    for i in range(1, gen):
        copy = torch.rand(n, generator=g) < 0.8
        seqs[:, i] = torch.where(copy, seqs[:, i - 1], torch.randint(3, 7, (n,), generator=g))
    data = torch.cat([torch.full((n, 1), 3), seqs], 1)
    cfg = DLMConfig(vocab_size=vocab, dim=64, depth=2, num_heads=2, mlp_hidden=128, seq_len=gen + 1)
    torch.manual_seed(seed)
    base = MaskedDiffusionLM.from_arch(cfg)
    tc = dict(lr=3e-3, batch_size=64, max_steps=base_steps, warmup_steps=20, log_every=50, checkpoint_every=10**9,
              progress=False, seed=seed)
    Trainer(DLMTask(base), [data], TrainConfig.from_mapping(tc, out_dir=str(Path(out_dir) / "base"))).train(resume=False)
    base.eval().requires_grad_(False)
    final, order = make_trajectories(base, data[:1024], 1, gen, g)
    torch.manual_seed(seed)
    layer = JointSamplerLayer(base_arch=cfg.to_dict(), base_fingerprint=base.fingerprint())
    tc = {**tc, "max_steps": layer_steps, "batch_size": 64}
    Trainer(JointTask(layer, base, k), [final, order],
            TrainConfig.from_mapping(tc, out_dir=str(Path(out_dir) / "layer"))).train(resume=False)
    layer.eval()
    allx = torch.tensor([[3, *t] for t in itertools.product(range(vocab), repeat=gen)])
    allx = allx[(allx[:, 1:] != cfg.mask_id).all(1)]
    logp = exact_log_prob(base, allx, 1)
    res: dict[str, Any] = {"k": k, "strings": int(allx.shape[0]), "p_exact_mass": float(logp.exp().sum())}
    emp = torch.zeros(allx.shape[0], dtype=torch.float64)  # the data distribution, for reference
    index = {tuple(r.tolist()): i for i, r in enumerate(allx)}
    for r in data:
        emp[index[tuple(r.tolist())]] += 1
    emp /= emp.sum()
    p = logp.exp()
    res["tv_exact_vs_data"] = float(0.5 * (p - emp).abs().sum())
    for name, lay in (("marginal", None), ("adjust", layer)):
        logq = replay_log_q(base, lay, allx, 1, k)
        q = logq.exp()
        res[f"{name}_mass"] = float(q.sum())
        res[f"{name}_tv"] = float(0.5 * (q - p).abs().sum())
        res[f"{name}_kl"] = float((q * (logq - logp)).sum())
    res["gap_closed_tv"] = (res["marginal_tv"] - res["adjust_tv"]) / res["marginal_tv"]
    res["gap_closed_kl"] = (res["marginal_kl"] - res["adjust_kl"]) / res["marginal_kl"]
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``mgen bench joint`` options."""
    p.add_argument("--model", default="dlm-text")
    p.add_argument("--joint-sampler", default="joint-dlm-text")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts (16 tokens each)")
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--ks", default="2,4,8")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy", action="store_true", help="also the exact TV/KL small-vocabulary experiment (trains "
                                                       "a tiny base model and its layer, ~1-2 min on one thread)")
    p.add_argument("--toy-steps", type=int, default=300, help="training steps of the toy base model and its layer")
    p.add_argument("--out", default="bench-joint")


add_args = add_arguments  # the older name


def run(args: argparse.Namespace) -> dict[str, Any]:
    """ADJUST vs marginal vs exact on dlm-text: KL to the exact joint, MAUVE, NLL, cost per token, tokens/s.

    Writes the per-method rows to ``--out/joint_rows.{json,md}``; returns the flat summary."""
    try:
        ks = [int(k) for k in str(args.ks).split(",")]
    except ValueError:
        raise UserError(f"--ks must be comma-separated integers (got {args.ks!r})") from None
    if any(k < 1 or k > args.gen_length for k in ks) or args.prompts < 2 or args.gen_length < 1:
        raise UserError("--ks values must be in 1..--gen-length, --prompts >= 2, --gen-length >= 1")
    base, entry = load_base(args.model)
    if entry is None:
        raise UserError("--model must be a registered dlm model (its held-out split gives the prompts)")
    layer = JointSamplerLayer.from_pretrained(args.joint_sampler)
    layer.check_base(base)
    _, held, _ = build_text_data(entry, base.cfg.seq_len)
    prompts = held[: args.prompts, :16].tolist()
    t0 = time.perf_counter()
    res = run_joint_benchmark(base, layer, prompts, ks=ks, gen_length=args.gen_length, seed=args.seed,
                              batch_size=args.batch_size)
    if args.toy:
        res["toy"] = toy_joint_experiment(k=4, base_steps=args.toy_steps, layer_steps=args.toy_steps, seed=args.seed)
    res["command"] = "mgen bench joint " + " ".join(sys.argv[3:]) if len(sys.argv) > 2 else "mgen bench joint"
    res["threads"] = torch.get_num_threads()
    res["seconds_total"] = round(time.perf_counter() - t0, 1)
    write_report(res, args.out)
    flat: dict[str, Any] = {"model": args.model, "joint_sampler": args.joint_sampler, "prompts": len(prompts),
                            "gen_length": args.gen_length}
    rows = {(r["method"], r["k"]): r for r in res["rows"]}
    ex = rows[("exact", 1)]
    flat.update(exact_nll=round(ex["nll_exact"], 4), exact_tokens_per_s=round(ex["tokens_per_s"], 1))
    for k in ks:
        m, a = rows[("marginal", k)], rows[("adjust", k)]
        flat.update({f"k{k}_kl_marginal": round(m["kl_to_exact"], 3), f"k{k}_kl_adjust": round(a["kl_to_exact"], 3),
                     f"k{k}_gap_closed_kl": None if a["gap_closed"] is None else round(a["gap_closed"], 3),
                     f"k{k}_mauve_marginal": None if m.get("mauve") is None else round(m["mauve"], 3),
                     f"k{k}_mauve_adjust": None if a.get("mauve") is None else round(a["mauve"], 3),
                     f"k{k}_nll_marginal": round(m["nll_exact"], 4), f"k{k}_nll_adjust": round(a["nll_exact"], 4),
                     f"k{k}_cost_per_token_marginal": f"{m['full_forwards_per_token']:.3f} fwd",
                     f"k{k}_cost_per_token_adjust": f"{a['full_forwards_per_token']:.3f} fwd + "
                                                    f"{a['sampler_passes_per_token']:.3f} sampler",
                     f"k{k}_tokens_per_s_marginal": round(m["tokens_per_s"], 1),
                     f"k{k}_tokens_per_s_adjust": round(a["tokens_per_s"], 1),
                     f"k{k}_time_vs_marginal": round(a["cost_vs_marginal"], 2)})
    if 4 in ks:
        a = rows[("adjust", 4)]
        flat["goal_k4_met"] = bool(a["gap_closed"] is not None and a["gap_closed"] >= 0.7
                                   and a["cost_vs_marginal"] <= 1.3)
    if "toy" in res:
        for key in ("marginal_tv", "adjust_tv", "marginal_kl", "adjust_kl", "gap_closed_tv", "gap_closed_kl"):
            flat[f"toy_k4_{key}"] = round(res["toy"][key], 4)
    flat["details"] = str(Path(args.out) / "joint_rows.md")
    return flat
