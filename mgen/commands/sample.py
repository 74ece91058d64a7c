"""`mgen sample`: sample images from a named model or weights (default: the shipped ``mar-digits``).

    mgen sample                                   # mar-digits, one sample per digit, into ./samples
    mgen sample --model mar-b --steps 16 --cfg 2.9 --class 207 --num 16 --seed 0 --out DIR
    mgen sample --model mar-b --weights checkpoint-last.pth --tokenizer-weights kl16.ckpt ...

Writes ``grid.png`` and one ``NNNN.png`` per sample into ``--out``. Text models (family ``dlm``) are
sampled by :func:`mgen.pipelines.dlm.run_text` with the text options.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from mgen.errors import UserError

HELP = "sample images from a named model or weights (default: the shipped mar-digits)"
DEFAULT_MODEL = "mar-digits"
MAX_STEPS = 256


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"model name (see `mgen info`) or saved pipeline folder (default: {DEFAULT_MODEL})")
    p.add_argument("--weights", default=None, help="generator weights file (e.g. the official checkpoint-last.pth)")
    p.add_argument("--tokenizer-weights", default=None, help="tokenizer weights file (e.g. kl16.ckpt)")
    p.add_argument("--steps", type=int, default=None, help="generation steps (default: the model's config)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--cfg-schedule", choices=("linear", "constant"), default=None, help="MAR: guidance schedule")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    p.add_argument("--head-steps", type=int, default=None, help="MAR: diffusion-head sampling steps (default 100)")
    p.add_argument("--class", dest="classes", type=int, nargs="+", default=None, metavar="LABEL",
                   help="class label(s), repeated to fill --num (default: 0, 1, 2, ... cycling)")
    p.add_argument("--num", type=int, default=None, help="number of images (default: 10 for digits, else 16)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward batch (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--out", default="samples", help="output folder (grid.png + one PNG per sample)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from mgen.samplers.recap import add_cli_arguments

    add_cli_arguments(p)  # --sampler recap, --recap-cache-steps, --recap-pre-full-steps, --recap-head-fast-ratio
    try:  # the text-generation options of the dlm family share this command
        from mgen.pipelines.dlm import add_text_arguments
    except ImportError:
        return
    add_text_arguments(p)


def _check_out_dir(out: str) -> Path:
    d = Path(out).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mgen-write-test-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to output folder {d}: {e.strerror or e}") from None
    return d


def _family(model: str) -> tuple[str, Any]:
    from mgen.pipelines import family_of

    return family_of(model)


def run(args: argparse.Namespace) -> int:
    import torch

    model = args.model or DEFAULT_MODEL
    args.model = model
    family, entry = _family(model)
    if family == "dlm":
        from mgen.pipelines.dlm import run_text

        args.device = args.device or "cpu"
        return run_text(args)
    # -- validate everything cheap before loading weights ------------------------------------------
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise UserError(f"--steps must be in 1..{MAX_STEPS}, got {args.steps}")
    if args.cfg is not None and args.cfg < 0:
        raise UserError(f"--cfg must be >= 0, got {args.cfg}")
    if args.temperature is not None and args.temperature <= 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if args.head_steps is not None and not 1 <= args.head_steps <= 1000:
        raise UserError(f"--head-steps must be in 1..1000, got {args.head_steps}")
    if args.num is not None and args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    num_classes = None
    if entry is not None:
        nc = entry.arch.get("class_num", entry.arch.get("num_classes"))
        num_classes = int(nc) if nc is not None else None
    if args.classes is not None and num_classes is not None:
        bad = [c for c in args.classes if not 0 <= c < num_classes]
        if bad:
            raise UserError(f"--class {bad[0]} is out of range for {model} (0..{num_classes - 1})")
    from mgen.samplers.recap import recap_from_cli

    recap = recap_from_cli(args, family, args.steps if args.steps is not None else
                           (entry.sampler.get("num_steps") if entry is not None else None))
    out_dir = _check_out_dir(args.out)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")

    from mgen.pipelines import load_pipeline

    pipe = load_pipeline(model, weights=args.weights, tokenizer_weights=args.tokenizer_weights, device=device)
    num_classes = getattr(pipe, "num_classes", num_classes)
    num = args.num or (10 if num_classes == 10 else 16)
    if args.classes is not None:
        if num_classes is not None and any(not 0 <= c < num_classes for c in args.classes):
            raise UserError(f"--class values must be in 0..{num_classes - 1}")
        labels = [args.classes[i % len(args.classes)] for i in range(num)]
    else:
        labels = [i % (num_classes or 1) for i in range(num)]
    kwargs: dict[str, Any] = {}
    if args.steps is not None:
        kwargs["num_inference_steps"] = args.steps
    if args.cfg is not None:
        kwargs["guidance_scale"] = args.cfg
    if family == "mar":
        kwargs.update(guidance_schedule=args.cfg_schedule, temperature=args.temperature, head_steps=args.head_steps,
                      progress=not args.no_progress)
        s = pipe.make_sampler(args.steps, args.cfg, args.cfg_schedule, args.temperature, args.head_steps)
        settings = s.settings()
    else:
        if args.temperature is not None:
            kwargs["temperature"] = args.temperature
        settings = {k: v for k, v in kwargs.items()}
    if recap is not None:
        kwargs["recap"] = recap
        settings = {**settings, "sampler": "recap", **{f"recap_{k}": v for k, v in recap.items() if v is not None}}
    weights = args.weights or ("(saved pipeline folder)" if entry is None else _weights_label(entry))
    print(f"mgen sample: model={model} weights={weights} device={device} num={num} seed={args.seed} "
          + " ".join(f"{k}={v}" for k, v in settings.items()) + f" classes={_short(labels)} out={out_dir}", flush=True)

    from mgen.samplers.base import per_sample_generators

    bs = args.batch_size or num
    # one stream per sample index for the whole request, handed to each batch as a list: sample i does not
    # depend on --batch-size (a single batch gets the same streams the pipeline would derive itself)
    streams = per_sample_generators(torch.Generator(device=device).manual_seed(args.seed), num, device)
    images = []
    for start in range(0, num, bs):
        chunk = torch.tensor(labels[start:start + bs], device=device)
        out = pipe(class_labels=chunk, generator=streams[start:start + bs], output_type="pt", **kwargs)
        images.append(out.images.float().cpu())
    imgs = torch.cat(images) * 2 - 1

    from mgen.images import save_grid, save_png, to_pil

    for i, im in enumerate(to_pil(imgs)):
        save_png(im, out_dir / f"{i:04d}.png")
    grid = save_grid(imgs, out_dir / "grid.png")
    print(f"wrote {grid} and {num} images to {out_dir}/")
    return 0


def _weights_label(entry: Any) -> str:
    from mgen import hub

    found = hub.find_weights(entry)
    return str(found) if found else "?"


def _short(labels: list[int]) -> str:
    if len(set(labels)) == 1:
        return f"{labels[0]}x{len(labels)}"
    return ",".join(map(str, labels[:12])) + ("…" if len(labels) > 12 else "")
