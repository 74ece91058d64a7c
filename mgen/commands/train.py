"""`mgen train --config configs/NAME.yaml`: the shared accelerate trainer on a model's recipe.

Every option is checked before any work starts (one line and exit status 2 on a bad value): sizes are positive
integers, the learning rate a finite number in (0, 1], the seed in [0, 2**63), ``--out`` a folder that can be
created and written. ``accelerate launch --multi_gpu --num_processes N -m mgen train …`` runs it on N processes
(also on CPU, with gloo) with the same global batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
from pathlib import Path

from mgen.errors import UserError

HELP = "train a model from its YAML config with the shared accelerate trainer"

SEED_LIMIT = 2**63


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a model YAML (configs/NAME.yaml) or a registered name")
    p.add_argument("--out", default=None,
                   help="output folder for checkpoints, log.jsonl, curves.png and sample grids (default runs/NAME)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train to (a positive integer)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="the global batch: items per optimizer step over all processes (a positive integer); "
                        "each of N processes takes about 1/N of it")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="at most this many items per process and forward pass (a positive integer): the rest of a "
                        "process's share is reached by gradient accumulation; default: the whole share at once")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate, a finite number in (0, 1]")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default=None,
                   help="overrides the config; 'auto' (the default) takes accelerate's --mixed_precision when given, "
                        "else bf16 on a GPU and full precision on CPU")
    p.add_argument("--seed", type=int, default=None, help="training seed, an integer in [0, 2**63)")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None,
                   help="write curves.png (loss and learning rate) beside log.jsonl; default: when matplotlib is "
                        "installed (pip install 'mgen[plot]'); --plot refuses to start without it")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")


def check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers up front (argparse has already refused what is not a number at all)."""
    for name in ("max_steps", "batch_size", "micro_batch_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.seed is not None and not 0 <= args.seed < SEED_LIMIT:
        raise UserError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    if args.lr is not None and not (math.isfinite(args.lr) and 0.0 < args.lr <= 1.0):
        raise UserError(f"--lr must be a finite number in (0, 1], got {args.lr}")
    if args.plot:
        from mgen.train.plot import require

        require()


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` (a folder) and prove it writable; one-line errors for a file in the way or no permission."""
    d = Path(out).expanduser()
    if d.exists() and not d.is_dir():
        raise UserError(f"--out {d}: exists and is not a folder")
    parent = d
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"--out {d}: {parent} is a regular file, not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-test-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to --out {d}: {e.strerror or e}") from None
    return d


def _build(entry, out_dir: str, max_steps: int | None, batch_size: int | None, seed: int | None):
    """The family's trainer for ``entry`` (the one place this command meets the builders)."""
    from mgen.train.tasks import build_training

    return build_training(entry, out_dir=out_dir, max_steps=max_steps, batch_size=batch_size, seed=seed)


def run(args: argparse.Namespace) -> int:
    from mgen import registry

    check_args(args)
    entry = registry.load_config_file(args.config) if Path(args.config).suffix in (".yaml", ".yml") else registry.get(args.config)
    out = check_out_dir(args.out or f"runs/{entry.name}")
    extra = {k: v for k, v in (("lr", args.lr), ("mixed_precision", args.mixed_precision), ("plot", args.plot),
                               ("micro_batch_size", args.micro_batch_size)) if v is not None}
    if extra:  # every family's builder hands entry.train to TrainConfig.from_mapping
        entry = dataclasses.replace(entry, train={**entry.train, **extra})
    trainer = _build(entry, str(out), args.max_steps, args.batch_size, args.seed)
    trainer.train(resume=not args.no_resume)
    if trainer.accelerator.is_main_process:
        written = [p for p in (trainer.checkpoint_dir, trainer.out_dir / "log.jsonl", trainer.curves_path) if p.exists()]
        sys.stderr.write("mgen train: wrote " + ", ".join(str(p) for p in written) + "\n")
    return 0
