"""ADJUST learning curve: share of the marginal→exact KL gap closed vs the layer's training steps.

    nohup nice -n 5 .venv/bin/python recipes/joint_learning_curve.py --config configs/joint-dlm-text-12.yaml \
        --run /work/runs/joint12 --out benchmarks/joint_learning_curve > /tmp/curve.log 2>&1 &

Reads the ``checkpoint-N`` snapshots that ``keep_every`` left in the layer's training run (``recipes/joint_dlm_text.py
--config …`` with ``--out RUN``) and, for each, measures on ``--prompts`` held-out prompts of the base (16 tokens,
``--gen-length`` generated) the reverse sequence KL(q ‖ p_exact) of ADJUST and of marginal sampling at each k,
exactly as ``mgen bench joint-frontier`` does (own samples, log p by replaying the exact rule). The gap closed is
1 − KL_adjust / KL_marginal, with a 95% bootstrap interval over prompts (paired: one resample for both).
Writes OUT/joint_learning_curve.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "joint-dlm-text-12.yaml"))
    ap.add_argument("--run", required=True, help="the layer's training run folder (with checkpoint-N snapshots)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "joint_learning_curve"))
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--gen-length", type=int, default=16)
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from safetensors.torch import load_file

    from mgen import registry
    from mgen.bench.joint import exact_log_prob
    from mgen.bench.joint_frontier import layer_cost_ratio
    from mgen.bench.report import ChartPoint, machine, plot_available, write_chart, write_report
    from mgen.models.joint_sampler import JointSamplerLayer, load_base
    from mgen.samplers.joint import JointSampler
    from mgen.train import checkpoint as ckpt
    from mgen.train.data import text_windows

    entry = registry.load_config_file(args.config)
    base, base_entry = load_base(entry.arch["base"])
    _, held, _ = text_windows(base_entry, base.cfg.seq_len)
    prompts = held[: args.prompts, :16]
    ks = [int(v) for v in args.ks.split(",") if v]
    snaps = sorted((p for p in Path(args.run).glob(f"{ckpt.PREFIX}*") if p.is_dir() and not p.is_symlink()),
                   key=lambda p: int(p.name[len(ckpt.PREFIX):]))
    if not snaps:
        print(f"no {ckpt.PREFIX}N folders in {args.run}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()

    def reverse_kl(k: int, layer: JointSamplerLayer | None) -> torch.Tensor:
        s = JointSampler(gen_length=args.gen_length, tokens_per_step=k, temperature=1.0)
        x = s.sample(base, prompts, layer=layer, generator=torch.Generator().manual_seed(args.seed + 1000))
        return s.log_q.clone() - exact_log_prob(base, x, 16)

    marginal = {k: reverse_kl(k, None) for k in ks}
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(0, prompts.shape[0], (args.bootstrap, prompts.shape[0]), generator=g)
    rows = []
    layer = None
    for snap in snaps:
        step = int(snap.name[len(ckpt.PREFIX):])
        layer = JointSamplerLayer(base_arch=base.cfg.to_dict(), base_fingerprint=base.fingerprint(),
                                  base_name=base_entry.name)
        layer.load_state_dict(load_file(str(snap / "model.safetensors")))
        layer.eval()
        for k in ks:
            kl_a = reverse_kl(k, layer)
            closed = 1 - kl_a.double()[idx].mean(1) / marginal[k].double()[idx].mean(1)
            row = {"step": step, "k": k, "kl_marginal": float(marginal[k].mean()), "kl_adjust": float(kl_a.mean()),
                   "gap_closed": float(1 - kl_a.mean() / marginal[k].mean()),
                   "gap_closed_ci": [round(float(closed.quantile(0.025)), 4), round(float(closed.quantile(0.975)), 4)]}
            rows.append(row)
            print(f"step {step} k={k}: KL marginal {row['kl_marginal']:.3f} adjust {row['kl_adjust']:.3f} "
                  f"gap closed {row['gap_closed']:.1%} {row['gap_closed_ci']}", flush=True)
    r = layer_cost_ratio(base, layer, 16 + args.gen_length)
    opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(vars(args).items()))
    result = {"meta": {"what": f"share of the marginal→exact reverse KL gap that ADJUST closes, per training step "
                               f"({args.prompts} held-out prompts, {args.gen_length} tokens, 95% paired bootstrap)",
                       "joint_sampler": entry.name, "base": base_entry.name, "base_depth": base.cfg.depth,
                       "num_trajectories": entry.arch.get("num_trajectories"), "layer_cost_ratio_r": r,
                       "command": f"python recipes/joint_learning_curve.py {opts}",
                       "seconds": round(time.perf_counter() - t0, 1), "machine": machine()}, "rows": rows}
    write_report(result, args.out, "joint_learning_curve", title=f"ADJUST learning curve ({entry.name})")
    if plot_available():
        series = {f"k={k}": [ChartPoint(rw["step"], rw["gap_closed"], low=rw["gap_closed_ci"][0],
                                        high=rw["gap_closed_ci"][1]) for rw in rows if rw["k"] == k] for k in ks}
        write_chart(series, Path(args.out) / "joint_learning_curve.png", "layer training steps",
                    "KL gap closed (1 − KL_adjust / KL_marginal)", title=f"{entry.name}: r = {r:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
