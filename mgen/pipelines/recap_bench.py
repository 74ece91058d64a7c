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
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from mgen.errors import UserError

DEFAULT_STEPS = {"maskgit": (8, 16, 32), "mar": (16, 32, 64)}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="maskgit-digits", help="maskgit*/mar* model name (default: maskgit-digits)")
    p.add_argument("--weights", default=None, help="generator weights file")
    p.add_argument("--random-weights", action="store_true",
                   help="time randomly initialised weights of the named config (speed only; no files needed)")
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="total step counts K (default: 8 16 32 for MaskGIT, 16 32 64 for MAR)")
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


def _load(args: argparse.Namespace, device: Any) -> tuple[str, Any, Any, Any]:
    """(family, generator, base sampler, tokenizer or None)."""
    import torch

    from mgen.pipelines import family_of, load_pipeline

    family, entry = family_of(args.model)
    if family not in ("maskgit", "mar"):
        raise UserError(f"ReCAP needs a generator that exposes its K/V cache (MaskGIT, MAR); {args.model} is {family!r}")
    if args.random_weights:
        if entry is None:
            raise UserError("--random-weights needs a model name, not a folder")
        torch.manual_seed(args.seed)
        if family == "mar":
            from mgen.models.mar import MAR, resolve_config
            from mgen.samplers.mar import MARSampler

            model = MAR.from_config_obj(resolve_config(entry.name))
            s = dict(entry.sampler)
            base = MARSampler(num_steps=int(s.get("num_steps", 64)), cfg=float(s.get("cfg", 1.0)),
                              cfg_schedule=s.get("cfg_schedule", "linear"), temperature=float(s.get("temperature", 1.0)),
                              head_steps=int(s.get("head_steps", 100)))
        else:
            from mgen.models.maskgit import MaskGITConfig, MaskGITTransformer
            from mgen.samplers.maskgit import MaskGITSampler

            model = MaskGITTransformer(MaskGITConfig.from_mapping(entry.arch, where=entry.path))
            base = MaskGITSampler.from_mapping(entry.sampler)
        return family, model.to(device).eval(), base, None
    pipe = load_pipeline(args.model, weights=args.weights, device=device)
    if family == "mar":
        return family, pipe.transformer.eval(), pipe.make_sampler(), pipe.tokenizer
    return family, pipe.transformer.eval(), pipe.sampler, pipe.vqvae


def _decode(family: str, tok: Any, out: Any) -> Any:
    import torch

    if family == "mar":
        from mgen.pipelines.mar import _unscale

        return tok.decode(_unscale(tok, out.float())).float().clamp(-1, 1)
    return tok.decode(out).float().clamp(-1, 1)


def _flops_per_image(family: str, model: Any, sampler: Any, label: Any, seed: int) -> float:
    """Matmul/attention FLOPs of the generator calls (not the MAR diffusion head) for one sample. The count
    runs on the ``math`` attention backend, whose matmuls FlopCounterMode sees (it does not count the CPU
    fused SDPA kernel); the FLOPs are the same for every backend."""
    old = os.environ.get("MGEN_ATTN")
    os.environ["MGEN_ATTN"] = "math"
    try:
        return _count_flops(family, model, sampler, label, seed)
    finally:
        if old is None:
            os.environ.pop("MGEN_ATTN", None)
        else:
            os.environ["MGEN_ATTN"] = old


def _count_flops(family: str, model: Any, sampler: Any, label: Any, seed: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    total = [0.0]
    if family == "mar":
        orig = model.condition

        def counted(*a: Any, **k: Any) -> Any:
            with FlopCounterMode(display=False) as fc:
                out = orig(*a, **k)
            total[0] += fc.get_total_flops()
            return out

        model.condition = counted
        try:
            sampler.sample(model, label, generator=torch.Generator().manual_seed(seed))
        finally:
            del model.condition
        return total[0]
    with FlopCounterMode(display=False) as fc:
        sampler.sample(model, label, generator=torch.Generator().manual_seed(seed))
    return float(fc.get_total_flops())


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Full evaluation vs ReCAP at the same total steps: images/s, FLOPs/image, digits quality."""
    import copy

    import torch

    from mgen.samplers.recap import ReCAP

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.repeats < 1:
        raise UserError("--batch-size and --repeats must be >= 1")
    if args.cache_steps < 0:
        raise UserError(f"--cache-steps must be >= 0, got {args.cache_steps}")
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    family, model, base0, tok = _load(args, device)
    steps = args.steps or DEFAULT_STEPS[family]
    for k in steps:
        if k < 1:
            raise UserError(f"--steps must be positive, got {k}")
        if args.pre_full_steps is not None and args.pre_full_steps > k:
            raise UserError(f"--pre-full-steps {args.pre_full_steps} exceeds the total steps {k}")
    num_classes = int(getattr(model, "num_classes", 1))
    labels = torch.arange(args.batch_size, device=device) % num_classes
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rows: list[dict[str, Any]] = []
    for k in steps:
        base = copy.copy(base0)
        base.num_steps = int(k)
        if args.cfg is not None:
            base.cfg = float(args.cfg)
        if family == "mar" and args.head_steps is not None:
            base.head_steps = int(args.head_steps)
        pre = args.pre_full_steps if args.pre_full_steps is not None else k // 2
        variants: list[tuple[str, Any]] = [("full", base), ("recap", ReCAP(base, pre, args.cache_steps))]
        if family == "mar" and args.head_fast_ratio:
            variants.append((f"recap+head{args.head_fast_ratio:g}", ReCAP(base, pre, args.cache_steps, args.head_fast_ratio)))
        times: dict[str, list[float]] = {n: [] for n, _ in variants}
        tr_times: dict[str, list[float]] = {n: [] for n, _ in variants}
        with torch.inference_mode():
            warm = args.warmup if args.warmup is not None else (1 if device.type == "cuda" else 0)
            for r in range(args.repeats + warm):  # warm-up rounds first; variants alternate within each round
                for name, s in variants:
                    sync()
                    t0 = time.perf_counter()
                    kw = {"profile": True} if family == "mar" else {}
                    s.sample(model, labels, generator=torch.Generator(device=device).manual_seed(args.seed + r), **kw)
                    sync()
                    if r >= warm:
                        times[name].append(time.perf_counter() - t0)
                        if family == "mar":
                            tr_times[name].append(base.timings.get("transformer_s", float("nan")))
            for name, s in variants:
                sec = sum(times[name]) / len(times[name])
                row: dict[str, Any] = {"K": k, "sampler": name, "full_evals": k, "cheap_evals": 0,
                                       "seconds_per_batch": round(sec, 3), "images_per_s": round(args.batch_size / sec, 4)}
                if isinstance(s, ReCAP):
                    plan = s.plan(k)
                    row.update(pre_full_steps=pre, cache_steps=args.cache_steps,
                               full_evals=plan.count("full"), cheap_evals=plan.count("cheap"))
                if family == "mar":
                    row["transformer_s_per_batch"] = round(sum(tr_times[name]) / len(tr_times[name]), 3)
                row["gflops_per_image"] = round(_flops_per_image(family, model, s, labels[:1], args.seed) / 1e9, 3)
                rows.append(row)
            full = next(r for r in rows if r["K"] == k and r["sampler"] == "full")
            for r in rows:
                if r["K"] == k:
                    r["speedup"] = round(r["images_per_s"] / full["images_per_s"], 3)
                    r["flops_ratio"] = round(full["gflops_per_image"] / r["gflops_per_image"], 3)
                    if "transformer_s_per_batch" in r:
                        r["transformer_speedup"] = round(full["transformer_s_per_batch"] / r["transformer_s_per_batch"], 3)
            if args.quality_samples and tok is not None:
                from mgen.eval.digits import digits_metrics

                n = int(args.quality_samples)
                qlabels = torch.arange(n, device=device) % num_classes
                for name, s in variants:
                    imgs = []
                    for i in range(0, n, 50):
                        out = s.sample(model, qlabels[i:i + 50], generator=torch.Generator(device=device).manual_seed(10_000 + i))
                        imgs.append(_decode(family, tok, out).cpu())
                    q = digits_metrics(torch.cat(imgs), qlabels.cpu())
                    row = next(r for r in rows if r["K"] == k and r["sampler"] == name)
                    row.update(digits_accuracy=round(q["digits_accuracy"], 4), digits_fid=round(q["digits_fid"], 3),
                               quality_samples=n)
    meta = {"bench": "recap", "model": args.model, "family": family, "random_weights": bool(args.random_weights),
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
            "threads": torch.get_num_threads(), "batch_size": args.batch_size, "repeats": args.repeats,
            "torch": torch.__version__,
            "cfg": getattr(base0, "cfg", None) if args.cfg is None else args.cfg,
            "head_steps": (args.head_steps or getattr(base0, "head_steps", None)) if family == "mar" else None}
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"recap-{Path(str(args.model)).name}" + ("-random" if args.random_weights else "")
    (out / f"{stem}.json.tmp").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    os.replace(out / f"{stem}.json.tmp", out / f"{stem}.json")
    (out / f"{stem}.md.tmp").write_text(markdown(meta, rows))
    os.replace(out / f"{stem}.md.tmp", out / f"{stem}.md")
    summary: dict[str, Any] = dict(meta)
    for r in rows:
        if r["sampler"] != "full":
            summary[f"K{r['K']}_{r['sampler']}_speedup"] = r["speedup"]
    summary["table"] = str(out / f"{stem}.md")
    print(markdown(meta, rows))
    return summary


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    head = (f"ReCAP benchmark: model {meta['model']}{' (random weights)' if meta['random_weights'] else ''}, "
            f"{meta['device_name']} ({meta['device']}, {meta['threads']} threads), batch {meta['batch_size']}, "
            f"{meta['repeats']} timed batches\n\n")
    return head + ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
                   + "".join("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |\n" for r in rows))
