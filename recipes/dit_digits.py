"""Train and ship a digits diffusion transformer: ``python recipes/dit_digits.py dit-digits|rae-dit-digits``.

1. ``mgen train --config configs/<name>.yaml`` through the shared trainer (resumes from ``--out``), on the
   sklearn digits encoded by the config's shipped tokenizer (``kl-digits`` / ``rae-digits``);
2. samples ``--per-class`` images of every class with the config's sampler (DDPM + CFG for DiT, flow
   Euler + CFG for DiT^DH), decodes them and measures the shipped digits classifier's class accuracy and
   the digits-FID (:mod:`mgen.eval.digits`);
3. writes the EMA weights to ``mgen/weights/<name>.safetensors`` and the numbers to ``<name>.json``.

Runs on one CPU thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def evaluate(name: str, model: torch.nn.Module, per_class: int, seed: int = 0) -> dict:
    from mgen import registry
    from mgen.eval.digits import digits_metrics
    from mgen.tokenizers import load_tokenizer
    from mgen.tokenizers.latents import decode_latents

    entry = registry.get(name)
    tok = load_tokenizer(entry.tokenizer)
    if entry.family == "dit":
        from mgen.samplers.ddpm import DDPMSampler as S
    else:
        from mgen.samplers.flow import FlowSampler as S
    sampler = S.from_mapping(entry.sampler)
    labels = torch.arange(10).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    with torch.no_grad():
        lat = torch.cat([sampler.sample(model, labels[i:i + 250], generator=g) for i in range(0, len(labels), 250)])
        images = decode_latents(tok, lat)
    out = {"samples": len(labels), "sampler": {k: v for k, v in sampler.__dict__.items() if k != "progress"},
           "sample_seconds": round(time.time() - t0, 1)}
    out.update({k: round(float(v), 4) for k, v in digits_metrics(images, labels).items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=["dit-digits", "rae-dit-digits"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--no-ship", action="store_true", help="evaluate only; do not write mgen/weights")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mgen import registry
    from mgen.hub import package_weights_dir, save_safetensors
    from mgen.train.tasks import build_training

    entry = registry.load_config_file(Path(__file__).resolve().parent.parent / "configs" / f"{args.name}.yaml")
    trainer = build_training(entry, out_dir=args.out or f"runs/{args.name}", max_steps=args.max_steps)
    t0 = time.time()
    trainer.train(resume=True)
    seconds = time.time() - t0
    model = trainer.eval_model.eval()
    info = {"name": args.name, "steps": trainer.step, "train_seconds_this_run": round(seconds, 1),
            "threads": args.threads, "num_params": sum(p.numel() for p in model.parameters())}
    info.update(evaluate(args.name, model, args.per_class))
    print(json.dumps(info, indent=2), flush=True)
    if not args.no_ship:
        wdir = package_weights_dir()
        save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                         wdir / f"{args.name}.safetensors", metadata={"config": json.dumps(entry.arch)})
        (wdir / f"{args.name}.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
