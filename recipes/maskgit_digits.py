"""Train and ship a discrete masked digits generator: ``python recipes/maskgit_digits.py maskgit-digits|enat-digits``.

1. ``mgen train --config configs/<name>.yaml`` through the shared trainer (the ``maskgit`` / ``enat``
   builders encode the training digits with the shipped ``vq-digits`` tokenizer; resumes from ``--out``);
2. takes the EMA weights, draws ``--per-class`` samples for each of the 10 classes with the config's
   decoder settings (fixed seed), decodes them with ``vq-digits`` and judges them with the shipped
   held-out digits classifier (:mod:`mgen.eval.digits`): class accuracy and digits-FID;
3. writes ``mgen/weights/<name>.safetensors`` (EMA weights) and ``mgen/weights/<name>.json`` (numbers).

Runs on one CPU thread (``torch.set_num_threads(1)``); start it in the background with ``nice``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def evaluate(name: str, model: torch.nn.Module, tokenizer: torch.nn.Module, per_class: int = 50, seed: int = 0,
             **sampler_overrides) -> dict:
    """Class accuracy / digits-FID of ``per_class`` samples per digit under the config's sampler."""
    from mgen import registry
    from mgen.eval.digits import digits_metrics

    entry = registry.get(name) if not name.endswith(".yaml") else registry.load_config_file(name)
    if entry.family == "enat":
        from mgen.samplers.enat import ENATSampler as S
    else:
        from mgen.samplers.maskgit import MaskGITSampler as S
    sampler = S.from_mapping(entry.sampler, **sampler_overrides)
    labels = torch.arange(10).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    with torch.no_grad():
        codes = sampler.sample(model.eval(), labels, generator=g)
        images = tokenizer.decode(codes)
    secs = time.time() - t0
    m = digits_metrics(images, labels)
    return {"accuracy": round(m["digits_accuracy"], 4), "digits_fid": round(m["digits_fid"], 3),
            "samples": int(labels.numel()), "sample_seconds": round(secs, 2),
            "sampler": {k: v for k, v in sampler.__dict__.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=["maskgit-digits", "enat-digits"])
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
    out = args.out or f"runs/{args.name}"
    trainer = build_training(entry, out_dir=out, max_steps=args.max_steps)
    t0 = time.time()
    trainer.train(resume=True)
    seconds = time.time() - t0
    model = trainer.eval_model.eval()
    info: dict = {"name": args.name, "steps": trainer.step, "train_seconds_this_run": round(seconds, 1),
                  "threads": args.threads, "num_params": sum(p.numel() for p in model.parameters())}
    info["eval"] = evaluate(args.name, model, trainer.task.tokenizer, per_class=args.per_class)
    print(json.dumps(info, indent=2))
    if not args.no_ship:
        wdir = package_weights_dir()
        save_safetensors(model.state_dict(), wdir / f"{args.name}.safetensors",
                         metadata={"format": "pt", "family": entry.family, "config": json.dumps(entry.arch)})
        (wdir / f"{args.name}.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
