"""Recipe of the shipped ``mar-digits`` weights: train, export the EMA weights, check the samples' class accuracy.

    python recipes/mar_digits.py                 # train (resumes), export, evaluate
    python recipes/mar_digits.py --eval-only     # evaluate the shipped weights

Training is ``mgen train --config configs/mar-digits.yaml`` (the shared trainer, MAR's loss) on ONE CPU
thread; the EMA weights are written to ``mgen/weights/mar-digits.safetensors`` with the official MAR key
names. Evaluation samples ``--per-class`` images for each digit with the config's sampler settings and
classifies them with the shipped digits classifier (``mgen/weights/digits-classifier.safetensors``,
trained on the training split only; see ``mgen.eval.digits``), and reports the accuracy and digits-FID
against the held-out split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "mar-digits"))
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--weights", default=str(ROOT / "mgen" / "weights" / "mar-digits.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mgen import registry
    from mgen.train.tasks import build_training

    entry = registry.load_config_file(ROOT / "configs" / "mar-digits.yaml")
    if not args.eval_only:
        trainer = build_training(entry, out_dir=args.out, max_steps=args.max_steps)
        t0 = time.time()
        trainer.train(resume=True)
        print(f"training wall time this run: {time.time() - t0:.0f} s, step {trainer.step}")
        model = trainer.eval_model
        model.save_safetensors(args.weights)
        print(f"wrote {args.weights} ({Path(args.weights).stat().st_size / 1e6:.2f} MB)")
    evaluate(args.weights, args.per_class)


@torch.no_grad()
def evaluate(weights: str, per_class: int) -> dict[str, float]:
    from mgen.eval.digits import digits_metrics
    from mgen.pipelines.mar import load_mar_pipeline

    pipe = load_mar_pipeline("mar-digits", weights=weights)
    labels = torch.arange(10).repeat_interleave(per_class)
    t0 = time.time()
    images = pipe(labels, generator=torch.Generator().manual_seed(0), output_type="pt").images * 2 - 1
    dt = time.time() - t0
    m = digits_metrics(images, labels)
    m.update({"num_samples": len(labels), "sample_seconds": round(dt, 1), **{f"sampler_{k}": v for k, v in pipe.defaults.items()}})
    print(json.dumps(m, indent=2))
    return m


if __name__ == "__main__":
    main()
