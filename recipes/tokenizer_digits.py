"""Train and ship a digits tokenizer: ``python recipes/tokenizer_digits.py kl-digits|vq-digits|rae-digits [--out DIR]``.

1. ``mgen train --config configs/<name>.yaml`` (the shared trainer; resumes from ``--out`` if present);
2. takes the EMA weights, measures reconstruction PSNR on the held-out digits split
   (:func:`mgen.tokenizers.digits.digits_images`, never seen in training), and for continuous
   KL tokenizer sets ``scaling_factor = 1 / std`` of the training latents (LDM §4.3.2: unit-variance latents;
   the RAE's latents are already normalised per position);
3. writes ``mgen/weights/<name>.safetensors`` (self-describing: config in its metadata) and
   ``mgen/weights/<name>.json`` (the measured numbers).

Runs on one CPU thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=["kl-digits", "vq-digits", "rae-digits"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mgen import registry
    from mgen.hub import package_weights_dir
    from mgen.tokenizers.digits import digits_images
    from mgen.tokenizers.kl import psnr
    from mgen.train.tasks import build_training

    entry = registry.load_config_file(Path(__file__).resolve().parent.parent / "configs" / f"{args.name}.yaml")
    out = args.out or f"runs/{args.name}"
    trainer = build_training(entry, out_dir=out, max_steps=args.max_steps)
    t0 = time.time()
    trainer.train(resume=True)
    seconds = time.time() - t0
    model = trainer.eval_model.eval()
    x_train, _ = digits_images("train", size=16)
    x_test, _ = digits_images("test", size=16)
    info: dict = {"name": args.name, "steps": trainer.step, "train_seconds_this_run": round(seconds, 1),
                  "threads": args.threads}
    with torch.no_grad():
        if args.name == "rae-digits":
            z = model.encode(x_test)
            rec = model.decode(z)
            info["latent_shape"] = list(z.shape[1:])
            info["noise_tau"] = model.noise_tau
        elif args.name == "kl-digits":
            z = model.encode(x_train)
            model.scaling_factor = float(1.0 / z.flatten().std())
            rec = model.decode(model.encode(x_test))
            info["latent_shape"] = list(z.shape[1:])
            info["scaling_factor"] = model.scaling_factor
        else:
            idx = model.encode(x_test)
            rec = model.decode(idx)
            used = torch.unique(model.encode(x_train)).numel()
            info["latent_shape"] = list(idx.shape[1:])
            info["codebook_size"] = model.codebook_size
            info["codes_used_train"] = int(used)
        info["psnr_test_db"] = round(psnr(rec, x_test), 2)
        info["psnr_train_db"] = round(psnr(model.decode(model.encode(x_train[:359])), x_train[:359]), 2)
    info["num_params"] = sum(p.numel() for p in model.parameters())
    wdir = package_weights_dir()
    model.save_file(wdir / f"{args.name}.safetensors")
    (wdir / f"{args.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
