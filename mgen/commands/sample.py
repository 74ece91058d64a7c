"""`mgen sample`: sample images (or text) from a named model or weights (default: the shipped ``mar-digits``).

    mgen sample                                   # mar-digits, one sample per digit, into ./samples
    mgen sample --model mar-b --steps 16 --cfg 2.9 --class 207 --num 16 --seed 0 --out DIR
    mgen sample --model mar-b --weights checkpoint-last.pth --tokenizer-weights kl16.ckpt ...

Writes ``grid.png`` (small images upscaled by an integer nearest-neighbour factor so the grid is at least 256 px on
its long side; ``--upscale``, ``--nrow``) and one native-resolution ``NNNN.png`` per sample into ``--out``. Text
models are sampled by :mod:`mgen.commands.sample_text` with the text options.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from mgen.commands.options import (DTYPES, MAX_SAMPLES, SEED, add_recap_arguments, check_compile, float_in, int_in,
                                   parse_device, parse_dtype, recap_from_args, refuse_inapplicable)
from mgen.errors import UserError

HELP = "sample images from a named model or weights (default: the shipped mar-digits)"
DEFAULT_MODEL = "mar-digits"
MAX_STEPS = 1000

#: image options → the sampler field each sets (refused for a model whose sampler has no such field)
SAMPLER_OPTIONS = {"--cfg-schedule": "cfg_schedule", "--head-steps": "head_steps"}
#: options that belong to the image path only (refused for text models)
IMAGE_ONLY = ("--tokenizer-weights", "--cfg", "--cfg-schedule", "--head-steps", "--class", "--num", "--batch-size",
              "--upscale", "--nrow", "--recap-cache-steps", "--recap-pre-full-steps", "--recap-head-fast-ratio")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"model name (see `mgen info`) or saved pipeline folder (default: {DEFAULT_MODEL})")
    p.add_argument("--weights", default=None, help="generator weights file (e.g. the official checkpoint-last.pth)")
    p.add_argument("--tokenizer-weights", default=None, help="tokenizer weights file (e.g. kl16.ckpt)")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=None,
                   help=f"generation steps, 1..{MAX_STEPS} (default: the model's config)")
    p.add_argument("--cfg", type=float_in(0.0, 100.0), default=None, help="classifier-free guidance scale, 0..100 (1 = off)")
    p.add_argument("--cfg-schedule", choices=("linear", "constant"), default=None, help="MAR / MaskGIT: guidance schedule")
    p.add_argument("--temperature", type=float_in(0.0, 100.0, lo_open=True), default=None,
                   help="sampling temperature, > 0 and <= 100")
    p.add_argument("--head-steps", type=int_in(1, 1000), default=None, help="MAR: diffusion-head sampling steps, 1..1000")
    p.add_argument("--class", dest="classes", type=int_in(0, None, "a class label"), nargs="+", default=None,
                   metavar="LABEL", help="class label(s), repeated to fill --num (default: 0, 1, 2, ... cycling)")
    p.add_argument("--num", type=int_in(1, None), default=None,
                   help=f"number of images (default: 10 for digits, else 16; more than {MAX_SAMPLES} needs --force)")
    p.add_argument("--batch-size", type=int_in(1, 4096), default=None, help="images per forward batch, 1..4096 (default: all)")
    p.add_argument("--force", action="store_true", help=f"allow more than {MAX_SAMPLES} images")
    p.add_argument("--seed", type=SEED, default=0, help="random seed, 0..2^63-1; sample i depends only on (seed, i)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="weights and compute precision (default fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator (refused where no backend works)")
    p.add_argument("--out", default="samples", help="output folder (grid.png + one PNG per sample)")
    p.add_argument("--upscale", type=int_in(1, 64), default=None,
                   help="grid.png: integer nearest-neighbour upscale (default: the smallest reaching 256 px)")
    p.add_argument("--nrow", type=int_in(1, 1024), default=None, help="grid.png: images per row (default ≈ √num)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_recap_arguments(p)  # --sampler recap, --recap-cache-steps, --recap-pre-full-steps, --recap-head-fast-ratio
    from mgen.commands.sample_text import add_text_arguments

    add_text_arguments(p)  # the text-generation options of the text models share this command


def check_out_dir(out: str) -> Path:
    """The output folder, created and probed for writing (a file in the way or no permission: one line, exit 2)."""
    d = Path(out).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-test-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot write to output folder {d}: a file is in the way") from None
    except OSError as e:
        raise UserError(f"cannot write to output folder {d}: {e.strerror or e}") from None
    from mgen.fileio import clean_stale_temps

    clean_stale_temps(d)  # temp files a killed earlier run left behind
    return d


def _given(args: argparse.Namespace, flag: str) -> bool:
    value = getattr(args, flag.lstrip("-").replace("-", "_"), None) if flag != "--class" else args.classes
    return value not in (None, False)


def run(args: argparse.Namespace) -> int:
    import torch

    from mgen.resolver import resolve

    model = args.model or DEFAULT_MODEL
    args.model = model
    # missing weights of a name are named later, by load_pipeline, in one line with the tokenizer's
    spec = resolve(model, args.weights, missing_ok=args.weights is None)
    family = spec.family
    if family.kind in ("text", "sampler-layer"):
        bad = [f for f in IMAGE_ONLY if _given(args, f)]
        if bad:
            raise UserError(f"{bad[0]} does not apply to text models ({model})")
        from mgen.commands.sample_text import run_text

        for p in getattr(args, "prompt", None) or []:
            try:
                p.encode("utf-8")
            except UnicodeEncodeError as e:  # bytes the shell passed that are not UTF-8 (surrogate-escaped by Python)
                bad = p.encode("utf-8", "surrogateescape")[e.start:e.start + 1]
                raise UserError(f"--prompt is not valid UTF-8 text (byte 0x{bad.hex()} at position {e.start}); "
                                "pass the prompt as UTF-8") from None
        args.device = str(parse_device(args.device)) if args.device else "cpu"
        return run_text(args)
    if getattr(args, "prompt", None):
        raise UserError(f"--prompt applies to text models; {model} is a {family.name!r} image model")
    # -- validate everything cheap before loading weights ------------------------------------------------------------
    num = args.num
    if num is not None and num > MAX_SAMPLES and not args.force:
        raise UserError(f"--num {num} is more than {MAX_SAMPLES} images; pass --force to write them all")
    entry = spec.entry
    n_cls = (entry.arch.get("class_num", entry.arch.get("num_classes")) if entry is not None else None)
    if args.classes is not None and isinstance(n_cls, int):
        bad = [c for c in args.classes if not 0 <= c < n_cls]
        if bad:
            raise UserError(f"--class {bad[0]} is out of range for {model} (0..{n_cls - 1})")
    steps = args.steps if args.steps is not None else (entry.sampler.get("num_steps", entry.sampler.get(
        "num_inference_steps")) if entry is not None else None)
    recap = recap_from_args(args, family, steps)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    if args.compile:
        check_compile(device)
    out_dir = check_out_dir(args.out)

    from mgen.pipelines import load_pipeline

    pipe = load_pipeline(model, weights=args.weights, tokenizer_weights=args.tokenizer_weights, device=device,
                         torch_dtype=dtype if dtype != torch.float32 else None)
    pipe.set_progress_bar_config(disable=bool(args.no_progress), leave=False, dynamic_ncols=True)
    refuse_inapplicable(args, SAMPLER_OPTIONS, set(pipe.scheduler.allowed()), f"{model} ({pipe.scheduler.sampler_class.__name__})")
    if args.temperature is not None and not ({"temperature", "samp_temp"} & set(pipe.scheduler.allowed())):
        raise UserError(f"--temperature does not apply to {model} (it samples a diffusion / flow ODE)")
    if args.compile:
        pipe.transformer = torch.compile(pipe.transformer)
    num_classes = pipe.num_classes
    num = num or (10 if num_classes == 10 else 16)
    if args.classes is not None:
        bad = [c for c in args.classes if not 0 <= c < num_classes]
        if bad:
            raise UserError(f"--class {bad[0]} is out of range for {model} (0..{num_classes - 1})")
        labels = [args.classes[i % len(args.classes)] for i in range(num)]
    else:
        labels = [i % num_classes for i in range(num)]
    kwargs: dict[str, Any] = {}
    for key, value in (("num_inference_steps", args.steps), ("guidance_scale", args.cfg),
                       ("temperature", args.temperature)):
        if value is not None:
            kwargs[key] = value
    if args.cfg_schedule is not None:
        kwargs["guidance_schedule"] = args.cfg_schedule
    if args.head_steps is not None:
        kwargs["head_steps"] = args.head_steps
    if recap is not None:
        kwargs["recap"] = recap
    shown = pipe.make_sampler(**{k: v for k, v in kwargs.items() if k != "recap"})
    settings = {k: getattr(shown, k) for k in pipe.scheduler.allowed() if hasattr(shown, k)}
    if recap is not None:
        settings = {**settings, "sampler": "recap", **{f"recap_{k}": v for k, v in recap.items() if v is not None}}
    print(f"mgen sample: model={model} device={device} dtype={args.dtype or 'fp32'} num={num} seed={args.seed} "
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
    grid = save_grid(imgs, out_dir / "grid.png", nrow=args.nrow, upscale=args.upscale)
    print(f"wrote {grid} and {num} images to {out_dir}/")
    return 0


def _short(labels: list[int]) -> str:
    if len(set(labels)) == 1:
        return f"{labels[0]}x{len(labels)}"
    return ",".join(map(str, labels[:12])) + ("…" if len(labels) > 12 else "")
