"""``mgen bench recap --model M``: full evaluation vs ReCAP (Liu et al. 2025, arXiv 2505.19089) at the same
total step count, measured side by side in one run.

For each K the base sampler (full evaluation at every step) and ``ReCAP(base, pre_full_steps, cache_steps)``
decode the same labels with the same seed, alternating run by run so both see the same machine load. Per
row: images/s, seconds per batch, transformer seconds (MAR), transformer FLOPs per image (counted with
``torch.utils.flop_counter.FlopCounterMode`` over the generator calls of one batch-1 sample) and, for the
shipped digits models, held-out-classifier accuracy and digits-FID (:mod:`mgen.eval.digits`). MAR gets a
third row per K with the shortened diffusion head on cheap steps (``--head-fast-ratio``), reported
separately because it is not feature reuse.

Random-weight runs (``--random-weights``) time the real architectures (MAR-B, MaskGIT ImageNet-256) without
checkpoints; their samples are meaningless, their speed is not.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from mgen import registry
from mgen.bench.flops import count_call_flops, count_flops
from mgen.bench.report import ChartPoint, machine, write_chart, write_report
from mgen.errors import UserError
from mgen.eval.digits import digits_metrics
from mgen.families import Family, get_family
from mgen.pipelines import load_pipeline
from mgen.resolver import resolve
from mgen.samplers.recap import ReCAP
from mgen.samplers.settings import SamplerSettings

#: default total step counts K: the config's step count (at most 16) times 1, 2 and 4
#: (8 16 32 for the MaskGIT configs, 16 32 64 for the MAR ones)
STEP_MULTIPLES = (1, 2, 4)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``mgen bench recap``."""
    p.add_argument("--model", default="maskgit-digits", help="a MaskGIT or MAR model name (default: maskgit-digits)")
    p.add_argument("--weights", default=None, help="generator weights file")
    p.add_argument("--random-weights", action="store_true",
                   help="time randomly initialised weights of the named config (speed only; no files needed)")
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="total step counts K (default: the config's steps, at most 16, times 1 2 4: 8 16 32 for "
                        "MaskGIT, 16 32 64 for MAR)")
    p.add_argument("--pre-full-steps", type=int, default=None,
                   help="full-only steps before the full/cheap cycles (default: K/2, the official MAR scripts' choice)")
    p.add_argument("--cache-steps", type=int, default=1, help="cheap steps after each full step (default 1)")
    p.add_argument("--head-fast-ratio", type=float, default=0.4,
                   help="MAR: extra row with the diffusion head shortened to this fraction on cheap steps (official 0.4; 0 = no row)")
    p.add_argument("--head-steps", type=int, default=None, help="MAR: diffusion-head steps (default: the config's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the config's)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="timed batches per setting")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first (default: 1 on GPU, 0 on CPU)")
    p.add_argument("--quality-samples", type=int, default=0,
                   help="digits models: samples per setting for accuracy + digits-FID (0 = skip; 200+ recommended)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench", help="folder for recap-<model>.json / .md")
    p.add_argument("--plot", action="store_true",
                   help="also write recap-<model>.png: quality (digits-FID, else GFLOPs per image) vs images/s, "
                        "one point per setting (needs matplotlib: pip install 'mgen[plot]')")


def _check_family(family: Family, model: str) -> None:
    if not family.recap:
        raise UserError(f"ReCAP needs a generator that exposes its K/V cache; {model} is a {family.name!r} model")


def _load(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any, Any]:
    """(generator, base sampler, pipeline or None) for ``--model`` (random weights: no pipeline)."""
    if args.random_weights:
        try:
            entry = registry.get(str(args.model))
        except UserError:
            raise UserError("--random-weights needs a model name, not a folder") from None
        family = get_family(entry.family)
        _check_family(family, args.model)
        torch.manual_seed(args.seed)
        model = family.model_class().from_arch(dict(entry.arch))
        base = SamplerSettings.for_sampler(family.sampler, dict(entry.sampler)).build()
        return model.to(device).eval(), base, None
    _check_family(resolve(args.model, args.weights, want="generator").family, args.model)
    pipe = load_pipeline(args.model, weights=args.weights, device=device)
    if callable(getattr(pipe, "set_progress_bar_config", None)):
        pipe.set_progress_bar_config(disable=True)  # the quality runs: a benchmark prints its table only
    model = getattr(pipe, getattr(pipe, "model_component", "transformer"))
    return model.eval(), pipe.make_sampler(), pipe


def _accepts(sampler: Any, name: str) -> bool:
    return name in inspect.signature(sampler.sample).parameters


def _transformer_flops(model: Any, sampler: Any, label: torch.Tensor, seed: int) -> float:
    """FLOPs of the generator's transformer for one sample: the calls to ``model.condition`` for models with a
    separate diffusion head (MAR: the head is not counted), else every FLOP of the decode."""
    def run() -> None:
        sampler.sample(model, label, generator=torch.Generator(device=label.device).manual_seed(seed))

    if callable(getattr(model, "condition_cached", None)) and callable(getattr(model, "condition", None)):
        return float(count_call_flops(model, "condition", run))
    return float(count_flops(run))


def _quality(pipe: Any, base: Any, recap: ReCAP | None, k: int, n: int, num_classes: int,
             device: torch.device) -> dict[str, Any]:
    """Held-out-classifier accuracy and digits-FID of ``n`` samples through the pipeline (decoded images)."""
    qlabels = torch.arange(n, device=device) % num_classes
    kw: dict[str, Any] = {"num_inference_steps": k, "guidance_scale": getattr(base, "cfg", None), "output_type": "pt"}
    if getattr(base, "head_steps", None) is not None:
        kw["head_steps"] = base.head_steps
    if recap is not None:
        kw["recap"] = {"pre_full_steps": recap.pre_full_steps, "cache_steps": recap.cache_steps,
                       "head_fast_ratio": recap.head_fast_ratio}
    images = []
    for i in range(0, n, 50):
        g = torch.Generator(device=device).manual_seed(10_000 + i)
        out = pipe(qlabels[i:i + 50], generator=g, **kw).images  # (b, 3, H, W) in [0, 1]
        images.append(out.float().cpu() * 2 - 1)
    q = digits_metrics(torch.cat(images), qlabels.cpu())
    return {"digits_accuracy": round(q["digits_accuracy"], 4), "digits_fid": round(q["digits_fid"], 3),
            "quality_samples": n}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Full evaluation vs ReCAP at the same total steps: images/s, FLOPs/image, digits quality; writes
    ``recap-<model>.json`` / ``.md`` through :func:`mgen.bench.report.write_report` and returns the result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.repeats < 1:
        raise UserError("--batch-size and --repeats must be >= 1")
    if args.cache_steps < 0:
        raise UserError(f"--cache-steps must be >= 0, got {args.cache_steps}")
    for k in args.steps or ():
        if k < 1:
            raise UserError(f"--steps must be positive, got {k}")
        if args.pre_full_steps is not None and args.pre_full_steps > k:
            raise UserError(f"--pre-full-steps {args.pre_full_steps} exceeds the total steps {k}")
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    model, base0, pipe = _load(args, device)
    ReCAP(base0).check(model)  # one clear line when this generator / sampler pair cannot be driven
    has_head = getattr(base0, "head_steps", None) is not None  # a diffusion head (MAR): its own rows and options
    steps = args.steps or [min(int(base0.num_steps), 16) * m for m in STEP_MULTIPLES]
    num_classes = int(getattr(model, "num_classes", None) or getattr(model, "class_num", 1))
    labels = torch.arange(args.batch_size, device=device) % num_classes
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    profiled = _accepts(base0, "profile")
    rows: list[dict[str, Any]] = []
    for k in steps:
        base = copy.copy(base0)
        base.num_steps = int(k)
        if args.cfg is not None:
            base.cfg = float(args.cfg)
        if has_head and args.head_steps is not None:
            base.head_steps = int(args.head_steps)
        if callable(getattr(base, "validate", None)):
            base.validate()
        pre = args.pre_full_steps if args.pre_full_steps is not None else k // 2
        variants: list[tuple[str, Any]] = [("full", base), ("recap", ReCAP(base, pre, args.cache_steps))]
        if has_head and args.head_fast_ratio:
            variants.append((f"recap+head{args.head_fast_ratio:g}", ReCAP(base, pre, args.cache_steps, args.head_fast_ratio)))
        times: dict[str, list[float]] = {n: [] for n, _ in variants}
        tr_times: dict[str, list[float]] = {n: [] for n, _ in variants}
        with torch.inference_mode():
            warm = args.warmup if args.warmup is not None else (1 if device.type == "cuda" else 0)
            for r in range(args.repeats + warm):  # warm-up rounds first; variants alternate within each round
                for name, s in variants:
                    sync()
                    t0 = time.perf_counter()
                    kw = {"profile": True} if profiled else {}
                    s.sample(model, labels, generator=torch.Generator(device=device).manual_seed(args.seed + r), **kw)
                    sync()
                    if r >= warm:
                        times[name].append(time.perf_counter() - t0)
                        if profiled:
                            tr_times[name].append(base.timings.get("transformer_s", float("nan")))
            for name, s in variants:
                sec = sum(times[name]) / len(times[name])
                row: dict[str, Any] = {"K": k, "sampler": name, "full_evals": k, "cheap_evals": 0,
                                       "seconds_per_batch": round(sec, 3), "images_per_s": round(args.batch_size / sec, 4)}
                if isinstance(s, ReCAP):
                    plan = s.plan(k)
                    row.update(pre_full_steps=pre, cache_steps=args.cache_steps,
                               full_evals=plan.count("full"), cheap_evals=plan.count("cheap"))
                if profiled:
                    row["transformer_s_per_batch"] = round(sum(tr_times[name]) / len(tr_times[name]), 3)
                row["gflops_per_image"] = round(_transformer_flops(model, s, labels[:1], args.seed) / 1e9, 3)
                rows.append(row)
            full = next(r for r in rows if r["K"] == k and r["sampler"] == "full")
            for r in rows:
                if r["K"] == k:
                    r["speedup"] = round(r["images_per_s"] / full["images_per_s"], 3)
                    r["flops_ratio"] = round(full["gflops_per_image"] / r["gflops_per_image"], 3)
                    if "transformer_s_per_batch" in r:
                        r["transformer_speedup"] = round(full["transformer_s_per_batch"] / r["transformer_s_per_batch"], 3)
        if args.quality_samples and pipe is not None:
            for name, s in variants:
                row = next(r for r in rows if r["K"] == k and r["sampler"] == name)
                row.update(_quality(pipe, base, s if isinstance(s, ReCAP) else None, k, int(args.quality_samples),
                                    num_classes, device))
    meta = {"bench": "recap", "model": args.model, "random_weights": bool(args.random_weights),
            "device": str(device), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
            "repeats": args.repeats, "cfg": getattr(base0, "cfg", None) if args.cfg is None else args.cfg,
            "head_steps": (args.head_steps or base0.head_steps) if has_head else None, "machine": machine()}
    result: dict[str, Any] = {"meta": meta, "rows": rows}
    stem = f"recap-{Path(str(args.model)).name}" + ("-random" if args.random_weights else "")
    title = (f"ReCAP benchmark: model {args.model}{' (random weights)' if args.random_weights else ''}, "
             f"{meta['machine']['processor']} ({device}, {meta['threads']} threads), batch {args.batch_size}, "
             f"{args.repeats} timed batches")
    j, m = write_report(result, args.out, stem, title=title)
    result["written"] = [str(j), str(m)]
    if getattr(args, "plot", False):
        result["written"].append(str(chart(result, j.with_suffix(".png"))))
    return result


#: the y axis of a ReCAP chart, in order of preference: (row key, axis label)
CHART_METRICS = (("digits_fid", "digits-FID (lower is better)"),
                 ("gflops_per_image", "transformer GFLOPs per image (no quality measured)"))


def chart(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Quality vs images/s of a ReCAP result as a PNG: one series per sampler (``full`` is the no-ReCAP baseline,
    then ``recap`` and MAR's ``recap+head…``), one point per total step count K (labelled ``K=…`` and ReCAP's ``pre_full_steps``). The quality is
    digits-FID where every row has it (the shipped digits models with ``--quality-samples``), else the
    transformer GFLOPs per image (random weights: speed only). A result without such rows is one UserError."""
    rows = [r for r in result.get("rows", []) if "images_per_s" in r and "sampler" in r]
    if not rows:
        raise UserError("this ReCAP result has no rows with sampler and images_per_s to chart")
    key, ylabel = next(((k, lab) for k, lab in CHART_METRICS if all(r.get(k) is not None for r in rows)),
                       (None, None))
    if key is None:
        raise UserError("this ReCAP result's rows have neither digits_fid nor gflops_per_image to chart")
    series: dict[str, list[ChartPoint]] = {}
    for r in rows:
        name = "full (no ReCAP)" if r["sampler"] == "full" else str(r["sampler"])
        label = f"K={r.get('K')}"
        if r["sampler"] != "full" and r.get("pre_full_steps") is not None:
            label += f", pre {r['pre_full_steps']}"
        series.setdefault(name, []).append(ChartPoint(float(r["images_per_s"]), float(r[key]), label=label))
    meta = result.get("meta", {})
    title = (f"ReCAP: {meta.get('model', '?')}{' (random weights)' if meta.get('random_weights') else ''}, "
             f"{meta.get('device', '?')}, {meta.get('threads', '?')} threads, batch {meta.get('batch_size', '?')}")
    if key == "digits_fid" and rows[0].get("quality_samples"):
        title += f", {rows[0]['quality_samples']} samples"
    return write_chart(series, path, "images / s", ylabel, title=title)
