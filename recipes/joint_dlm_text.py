"""Recipe for the shipped ``joint-dlm-text`` ADJUST layer (configs/joint-dlm-text.yaml) and its benchmark.

    nohup nice -n 5 .venv/bin/python recipes/joint_dlm_text.py --out /tmp/joint-dlm-text-run > /tmp/joint.log 2>&1 &

1. trajectories of the frozen ``dlm-text`` (one token per full forward, lowest entropy first; cached in --out);
2. trains the layer with the shared trainer on ONE CPU thread (``mgen train --config configs/joint-dlm-text.yaml``
   does the same);
3. writes ``mgen/weights/joint-dlm-text.safetensors`` (float16, with the base model's fingerprint);
4. benchmarks marginal vs ADJUST vs exact on held-out prompts (``mgen.pipelines.dlm_bench``) → --out/bench,
   and the exact small-vocabulary experiment (TV / KL to the true joint) for k = 2 and 4.
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
    ap.add_argument("--out", default="/tmp/joint-dlm-text-run")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bench-prompts", type=int, default=64)
    ap.add_argument("--bench-only", action="store_true")
    ap.add_argument("--config", default=str(ROOT / "configs" / "joint-dlm-text.yaml"),
                    help="the joint-dlm config (configs/joint-dlm-text-12.yaml: the layer for the 12-layer base)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mgen import registry
    from mgen.train.data import text_windows as build_text_data
    from mgen.models.joint_sampler import load_base, load_joint, save_joint
    from mgen.bench.joint import markdown_table, run_joint_benchmark, toy_joint_experiment, write_report
    from mgen.train.tasks import build_training

    entry = registry.load_config_file(args.config)
    out = ROOT / "mgen" / "weights" / entry.weights.package
    if not args.bench_only:
        t0 = time.time()
        trainer = build_training(entry, out_dir=args.out, max_steps=args.max_steps)
        print(f"trajectories ready in {time.time() - t0:.0f}s", flush=True)
        trainer.config.progress = False
        rec = trainer.train(resume=True)
        print(f"trained to step {trainer.step} in {time.time() - t0:.0f}s this run: {rec}", flush=True)
        save_joint(trainer.unwrapped, str(out))
        print(f"weights → {out} ({out.stat().st_size / 1e6:.2f} MB)", flush=True)

    base, base_entry = load_base(entry.arch["base"])
    layer = load_joint(str(out))
    layer.check_base(base)
    _, held, tok = build_text_data(base_entry, base.cfg.seq_len)
    prompts = held[: args.bench_prompts, : entry.arch["prompt_len"]].tolist()
    t0 = time.time()
    res = run_joint_benchmark(base, layer, prompts, ks=(2, 4, 8), gen_length=entry.arch["gen_len"])
    print(f"benchmark in {time.time() - t0:.0f}s", flush=True)
    print(markdown_table(res), flush=True)
    write_report(res, Path(args.out) / "bench")
    for row in res["rows"]:
        if row["k"] in (1, 4):
            seq = row["sequences"][0][0]
            print(f"{row['method']} k={row['k']}: {tok.decode(seq[:16])!r} → {tok.decode(seq[16:])!r}", flush=True)
    import json

    for k in (2, 4):  # exact distances where every string can be enumerated (mgen.bench.joint)
        toy = toy_joint_experiment(k=k, base_steps=400, layer_steps=300)
        print("toy exact joint:", json.dumps(toy), flush=True)
        (Path(args.out) / "bench" / f"toy_k{k}.json").write_text(json.dumps(toy, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
