"""`mgen bench NAME …`: benchmarks measured on this machine; each writes JSON and a markdown table.

Benchmarks are registered in :data:`BENCHES` as ``name: (add_args(parser), run(args) -> dict)``; ``run``
returns a flat result record (what is printed and written). Other areas add their own entries.

    mgen bench sample --model mar-digits --steps 16 --batch-size 16
    mgen bench sample --model mar-b --random-weights --steps 16 --batch-size 8 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

from mgen.errors import UserError

HELP = "benchmarks (speed, memory) measured on this machine; writes JSON + a markdown table"


# -- sample ---------------------------------------------------------------------------------------
def _add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mar-digits", help="model name or saved pipeline folder (default: mar-digits)")
    p.add_argument("--weights", default=None, help="generator weights file")
    p.add_argument("--tokenizer-weights", default=None)
    p.add_argument("--random-weights", action="store_true",
                   help="MAR, DiT, RAE-DiT: time randomly initialised weights of the named config (no files needed; no decoding)")
    p.add_argument("--steps", type=int, default=16, help="generation steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's config)")
    p.add_argument("--head-steps", type=int, default=None, help="MAR: diffusion-head steps")
    p.add_argument("--repeats", type=int, default=3, help="timed batches (after one warm-up batch)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench", help="folder for sample.json and sample.md")
    p.add_argument("--attn-backends", nargs="+", default=None, metavar="NAME",
                   help="DiT / RAE-DiT: attention backends timed one after another (default: all available)")


def _load_for_bench(args: argparse.Namespace, device: Any) -> Any:
    from mgen.pipelines import family_of, load_pipeline

    if args.random_weights:
        family, entry = family_of(args.model)
        if family not in ("mar", "dit", "rae-dit") or entry is None:
            raise UserError("--random-weights is available for named MAR, DiT and RAE-DiT models "
                            "(mar-b, dit-xl-2, rae-dit-xl, ...)")
        import torch

        torch.manual_seed(args.seed)
        if family == "mar":
            from mgen.models.mar import MAR, resolve_config
            from mgen.pipelines.mar import MARPipeline

            pipe = MARPipeline(tokenizer=None, transformer=MAR.from_config_obj(resolve_config(entry.name)).eval())
            pipe.defaults.update({k: v for k, v in entry.sampler.items() if k in pipe.defaults})
        elif family == "dit":
            from mgen.models.dit import DiT, DiTConfig
            from mgen.pipelines.dit import DiTPipeline
            from mgen.samplers.ddpm import DDPMSampler

            model = DiT(DiTConfig.from_mapping(entry.arch, where=entry.path))
            pipe = DiTPipeline(model.eval(), torch.nn.Identity(), DDPMSampler.from_mapping(dict(entry.sampler)))
        else:
            from mgen.models.lightningdit import LightningDiT, LightningDiTConfig
            from mgen.pipelines.rae_dit import RAEDiTPipeline
            from mgen.samplers.flow import FlowSampler

            model = LightningDiT(LightningDiTConfig.from_mapping(entry.arch, where=entry.path))
            pipe = RAEDiTPipeline(model.eval(), torch.nn.Identity(), FlowSampler.from_mapping(dict(entry.sampler)))
        return pipe.to(device)
    return load_pipeline(args.model, weights=args.weights, tokenizer_weights=args.tokenizer_weights, device=device)


def _attention_backends(args: argparse.Namespace, family: str) -> list[str | None]:
    """DiT / RAE-DiT: the attention backends timed one after another (``--attn-backends``, default all available);
    other families: ``[None]``, one timing with the model's own backend."""
    if family not in ("dit", "rae-dit"):
        return [None]
    from mgen.nn.attention import available_backends, resolve_backend

    backends = list(getattr(args, "attn_backends", None) or available_backends())
    for b in backends:
        if b == "auto":
            raise UserError("--attn-backends: name concrete backends (sdpa, math, xformers)")
        resolve_backend(b)  # unknown or unavailable backend -> one clear line
    return backends


def _run_sample(args: argparse.Namespace) -> dict[str, Any]:
    """Sampling speed: images/s and seconds per step (MAR: transformer vs diffusion head; DiT / RAE-DiT: once
    per attention backend, keys prefixed with the backend), peak memory."""
    import contextlib
    import dataclasses

    import torch

    from mgen.pipelines import family_of

    if not 1 <= args.steps <= 256:
        raise UserError(f"--steps must be in 1..256, got {args.steps}")
    if args.batch_size < 1 or args.repeats < 1:
        raise UserError("--batch-size and --repeats must be >= 1")
    backends = _attention_backends(args, family_of(args.model)[0])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    pipe = _load_for_bench(args, device)
    labels = torch.arange(args.batch_size) % int(getattr(pipe, "num_classes", 1) or 1)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
    is_mar = hasattr(pipe, "make_sampler")
    out_type = "latent" if args.random_weights or (is_mar and getattr(pipe, "tokenizer", None) is None) else "pt"
    kwargs: dict[str, Any] = {"num_inference_steps": args.steps, "output_type": out_type}
    if args.cfg is not None:
        kwargs["guidance_scale"] = args.cfg
    if is_mar:
        kwargs.update(head_steps=args.head_steps, profile=True)
    result: dict[str, Any] = {
        "bench": "sample", "model": args.model, "pipeline": type(pipe).__name__, "random_weights": bool(args.random_weights),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "dtype": args.dtype, "batch_size": args.batch_size, "steps": args.steps,
        "repeats": args.repeats,
    }
    n_evals = args.steps
    if backends != [None]:  # DiT / RAE-DiT: the sampler's own step count (RAE's time grid has N points, N-1 steps)
        sampler = dataclasses.replace(pipe.sampler, num_inference_steps=args.steps,
                                      **({"guidance_scale": args.cfg} if args.cfg is not None else {}))
        n_evals = args.steps - 1 if getattr(sampler, "time_grid", "uniform") == "rae" else args.steps
        result.update(sampler_steps=n_evals, method=getattr(sampler, "method", None), cfg=sampler.guidance_scale,
                      decoded=out_type != "latent")

    def once(seed: int) -> dict[str, float]:
        g = torch.Generator(device=device).manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast:
            pipe(class_labels=labels.to(device), generator=g, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rec = {"total_s": time.perf_counter() - t0}
        if is_mar and pipe.last_sampler is not None:
            rec.update(pipe.last_sampler.timings)
        return rec

    previous = pipe.transformer.attn_backend if backends != [None] else None
    try:
        for b in backends:
            key = "" if b is None else f"{b}_"
            if b is not None:
                pipe.transformer.attn_backend = b
            once(args.seed)  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            runs = [once(args.seed + 1 + i) for i in range(args.repeats)]
            total = sum(r["total_s"] for r in runs) / len(runs)
            result[f"{key}seconds_per_batch"] = round(total, 4)
            result[f"{key}images_per_s"] = round(args.batch_size / total, 3)
            result[f"{key}seconds_per_step"] = round(total / max(1, n_evals), 5)
            if device.type == "cuda":
                result[f"{key}peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    finally:
        if backends != [None]:
            pipe.transformer.attn_backend = previous
    if is_mar:
        s = pipe.last_sampler
        result.update(cfg=s.cfg, head_steps=s.head_steps,
                      transformer_s_per_step=round(sum(r["transformer_s"] for r in runs) / len(runs) / max(1, runs[0]["steps"]), 5),
                      head_s_per_step=round(sum(r["head_s"] for r in runs) / len(runs) / max(1, runs[0]["steps"]), 5))
    if device.type != "cuda":
        import resource

        result["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # process peak RSS
    return result


# -- fid (owned by the eval area: mgen/eval/bench.py) ----------------------------------------------
def _add_fid(p: argparse.ArgumentParser) -> None:
    from mgen.eval.bench import add_args

    add_args(p)


def _run_fid(args: argparse.Namespace) -> dict[str, Any]:
    """Inception feature extraction images/s: mgen vs torch-fidelity on the same folder, same run."""
    from mgen.eval.bench import run as run_fid

    return run_fid(args)


# -- recap (owned by the ReCAP area: mgen/pipelines/recap_bench.py) -----------------------------------
def _add_recap(p: argparse.ArgumentParser) -> None:
    from mgen.pipelines.recap_bench import add_args

    add_args(p)


def _run_recap(args: argparse.Namespace) -> dict[str, Any]:
    """ReCAP vs full evaluation at the same total steps: images/s, FLOPs/image, digits quality."""
    from mgen.pipelines.recap_bench import run as run_recap

    return run_recap(args)


def _add_enat(p: argparse.ArgumentParser) -> None:
    from mgen.models.enat_benchmark import add_cli_arguments

    add_cli_arguments(p)


def _run_enat(args: argparse.Namespace) -> dict[str, Any]:
    """ENAT vs MaskGIT: FLOPs per image and images/s over a full 8-step decode."""
    from mgen.models.enat_benchmark import run_cli

    return run_cli(args)


def _add_joint(p: argparse.ArgumentParser) -> None:
    from mgen.bench.joint import add_arguments

    add_arguments(p)


def _run_joint(args: argparse.Namespace) -> dict[str, Any]:
    """ADJUST vs marginal vs exact k-tokens-per-forward on dlm-text: KL, MAUVE, NLL, cost, tokens/s."""
    from mgen.bench.joint import run as run_joint

    return run_joint(args)


#: name -> (add_args(parser), run(args) -> result dict)
BENCHES: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict[str, Any]]]] = {
    "sample": (_add_sample, _run_sample),
    "fid": (_add_fid, _run_fid),
    "recap": (_add_recap, _run_recap),
    "enat": (_add_enat, _run_enat),
    "joint": (_add_joint, _run_joint),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="{" + ",".join(BENCHES) + "}", parser_class=type(p))
    for name, (add, run_fn) in BENCHES.items():
        sp = sub.add_parser(name, help=(run_fn.__doc__ or name).strip().splitlines()[0])
        add(sp)


def markdown_table(result: dict[str, Any]) -> str:
    keys = list(result)
    return ("| " + " | ".join(keys) + " |\n| " + " | ".join("---" for _ in keys) + " |\n| "
            + " | ".join(str(result[k]) for k in keys) + " |\n")


def write_outputs(result: dict[str, Any], out: str | os.PathLike, name: str) -> tuple[Path, Path]:
    d = Path(out).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to {d}: {e.strerror or e}") from None
    paths = (d / f"{name}.json", d / f"{name}.md")
    for path, text in zip(paths, (json.dumps(result, indent=2) + "\n", markdown_table(result))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "bench", None)
    if name is None:
        raise UserError(f"usage: mgen bench {{{','.join(BENCHES)}}} ... (see mgen bench --help)")
    result = BENCHES[name][1](args)
    for k, v in result.items():
        print(f"{k:24s} {v}")
    paths = write_outputs(result, getattr(args, "out", "bench"), name)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0
