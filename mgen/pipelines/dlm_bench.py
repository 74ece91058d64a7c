"""Joint vs marginal sampling benchmark for a masked diffusion LM and its ADJUST layer (``mgen bench joint``).

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

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from mgen.samplers.dlm import ExactSampler, model_logits, prepare_prompts
from mgen.samplers.joint import JointSampler


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
        return {"method": name, "k": k, "kl_to_exact": float((lq - lp).mean()),
                "kl_stderr": float((lq - lp).std() / len(prompts) ** 0.5),
                "nll_exact": float(-lp.mean() / gen_length),
                "full_forwards_per_token": ff / total, "sampler_passes_per_token": sp / total,
                "tokens_per_s": total / wall, "seconds": wall,
                "sequences": [x.tolist() for x in seqs]}

    exact = run("exact", 1)
    results["rows"].append(exact)
    for k in ks:
        marg = run("marginal", k)
        adj = run("adjust", k)
        gap = (marg["kl_to_exact"] - adj["kl_to_exact"]) / marg["kl_to_exact"] if marg["kl_to_exact"] > 0 else None
        adj["gap_closed"] = gap
        adj["cost_vs_marginal"] = marg["tokens_per_s"] / adj["tokens_per_s"]
        results["rows"] += [marg, adj]
    return results


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| method | k | KL(q‖p_exact) nats/sample | NLL nats/token | full fwd/token | sampler passes/token | tokens/s | gap closed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        gap = r.get("gap_closed")
        lines.append(f"| {r['method']} | {r['k']} | {r['kl_to_exact']:.2f} ± {r['kl_stderr']:.2f} | {r['nll_exact']:.3f} "
                     f"| {r['full_forwards_per_token']:.3f} | {r['sampler_passes_per_token']:.3f} | {r['tokens_per_s']:.1f} "
                     f"| {'' if gap is None else f'{100 * gap:.0f}%'} |")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slim = {**results, "rows": [{k: v for k, v in r.items() if k != "sequences"} for r in results["rows"]]}
    (out / "joint.json").write_text(json.dumps(slim, indent=2))
    (out / "joint.md").write_text(markdown_table(results) + "\n")
    return out / "joint.md"
