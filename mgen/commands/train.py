"""`mgen train --config configs/NAME.yaml`: the shared accelerate trainer on a model's recipe."""

from __future__ import annotations

import argparse

HELP = "train a model from its YAML config with the shared accelerate trainer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a model YAML (configs/NAME.yaml) or a registered name")
    p.add_argument("--out", default=None, help="output folder for checkpoints, logs and sample grids")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mgen import registry
    from mgen.train.tasks import build_training

    entry = registry.load_config_file(args.config) if Path(args.config).suffix in (".yaml", ".yml") else registry.get(args.config)
    run = build_training(entry, out_dir=args.out, max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed)
    run.train(resume=not args.no_resume)
    return 0
