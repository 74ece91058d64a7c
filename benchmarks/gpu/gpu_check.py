"""One GPU check for mgen (issue 15): attention backends, bf16/fp16 paths, sampling speed, training MFU.

Run through ``benchmarks/gpu/run.sh`` (one H100/H200, under 8 minutes) or ``--dry-run`` on a CPU (tiny shapes,
same code path; used by tests/test_gpu_check.py). Every section records its result or its error and goes on;
a time budget skips what would not fit. Writes ``results.json`` and ``results.md`` (through
:func:`mgen.bench.report.write_report`) to ``--out``.

Sections
1. attention: flash / memory-efficient / cuDNN SDPA kernels and xformers (if installed) vs the float32 ``math``
   reference, in fp16 and bf16;
2. sampling images/s at ImageNet size with random weights: MAR-B (16 steps, head 100, CFG 2.9), DiT-XL/2
   (DDPM, 50 steps, CFG 1.5) and MaskGIT (8 steps) in fp32 / bf16 / fp16 / bf16+compile / bf16+CUDA graphs
   (``torch.compile(mode="reduce-overhead")``);
3. training-step MFU of DiT-XL/2 in bf16 autocast (FLOPs counted by ``torch.utils.flop_counter``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

#: dense bf16 tensor-core peak (TFLOP/s) by device-name fragment (NVIDIA data sheets, SXM parts)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, float]:
    """(warm-up seconds, median seconds of ``repeats`` timed calls)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return warm, sorted(times)[len(times) // 2]


def _record(rows: list[dict[str, Any]], section: str, name: str, fn: Callable[[], dict[str, Any]]) -> None:
    t0 = time.perf_counter()
    try:
        row = {"section": section, "case": name, **fn()}
    except Exception as e:  # a failing case is a result, not a stop
        row = {"section": section, "case": name, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        traceback.print_exc()
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    rows.append(row)
    print(json.dumps(row), flush=True)


# -- 1. attention ------------------------------------------------------------------------------------
def check_attention(rows: list, device: torch.device, dry: bool) -> None:
    from mgen.nn.attention import attention, xformers_available

    b, h, n, d = (1, 2, 16, 8) if dry else (4, 16, 1024, 64)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(device) for _ in range(3))
    ref = attention(q.float(), k.float(), v.float(), backend="math")
    kernels: list[tuple[str, Any]] = [("math", None)]
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if device.type == "cuda":
            kernels += [("flash", SDPBackend.FLASH_ATTENTION), ("mem_efficient", SDPBackend.EFFICIENT_ATTENTION),
                        ("cudnn", getattr(SDPBackend, "CUDNN_ATTENTION", None))]
        kernels[0] = ("math", SDPBackend.MATH)
    except ImportError:
        sdpa_kernel = None
    tol = {torch.float16: 5e-3, torch.bfloat16: 3e-2}
    for dtype in (torch.float16, torch.bfloat16):
        if device.type == "cpu" and dtype == torch.float16 and not dry:
            continue
        qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
        for name, kernel in kernels:
            if sdpa_kernel is not None and kernel is None and name != "math":
                continue

            def one(kernel=kernel) -> dict[str, Any]:
                ctx = sdpa_kernel(kernel) if (sdpa_kernel is not None and kernel is not None) else _null()
                with ctx:
                    out = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd)
                err = float((out.float() - ref).abs().max())
                return {"dtype": str(dtype).split(".")[-1], "max_abs_err": err, "ok": err < tol[dtype]}

            _record(rows, "attention", f"sdpa-{name}", one)
        backends = ["sdpa"] + (["xformers"] if xformers_available() and device.type == "cuda" else [])
        for be in backends:
            def two(be=be) -> dict[str, Any]:
                err = float((attention(qd, kd, vd, backend=be).float() - ref).abs().max())
                return {"dtype": str(dtype).split(".")[-1], "max_abs_err": err, "ok": err < tol[dtype]}

            _record(rows, "attention", f"mgen-{be}", two)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


# -- 2. sampling -------------------------------------------------------------------------------------
_DT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _entry(name: str) -> Any:
    from mgen import registry

    return registry.get(name)


def _model(entry: Any, device: torch.device) -> torch.nn.Module:
    from mgen.families import get_family

    torch.manual_seed(0)
    cls = get_family(entry.family).model_class()
    return cls.from_arch(dict(entry.arch)).eval().to(device)


def sample_mar(rows: list, device: torch.device, dry: bool, modes: list[str], budget: Budget) -> None:
    from mgen.samplers.mar import MARSampler

    entry = _entry("mar-digits" if dry else "mar-b")
    base = _model(entry, device)
    bsz = 2 if dry else 64
    settings = dict(num_steps=2 if dry else 16, cfg=2.9, cfg_schedule="linear", temperature=1.0,
                    head_steps=2 if dry else 100)
    labels = torch.arange(bsz, device=device) % base.num_classes
    for mode in modes:
        if budget.left() < 60 and not dry:
            rows.append({"section": "sample", "case": f"mar-b {mode}", "skipped": "time budget"})
            continue

        def one(mode=mode) -> dict[str, Any]:
            dtype, _, extra = mode.partition("+")
            model = base if dtype == "fp32" else _copy(base).to(_DT[dtype])
            compile_ = {"": False, "compile": True, "cudagraphs": "reduce-overhead"}[extra]
            s = MARSampler(**settings, compile=compile_)
            run = lambda: s.sample(model, labels, generator=torch.Generator(device=device).manual_seed(0), profile=True)  # noqa: E731
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            warm, sec = _timed(run, device, 1 if dry else 2)
            out = run()
            res = {"model": entry.name, "mode": mode, "batch": bsz, "images_per_s": bsz / sec, "warmup_s": warm,
                   "transformer_s": s.timings["transformer_s"], "head_s": s.timings["head_s"],
                   "out_dtype": str(out.dtype).split(".")[-1], "ok": bool(torch.isfinite(out).all()) and out.dtype == torch.float32}
            if device.type == "cuda":
                res["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            return res

        _record(rows, "sample", f"{entry.name} {mode}", one)


def _copy(m: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(m)


def sample_family(rows: list, device: torch.device, dry: bool, name: str, modes: list[str], budget: Budget) -> None:
    """DiT-XL/2 (DDPM) or MaskGIT: the family's sampler over random weights; compile = torch.compile(model)."""
    from mgen.families import get_family

    entry = _entry(name)
    base = _model(entry, device)
    fam = get_family(entry.family)
    sampler_cls = fam.sampler_class()
    settings = dict(entry.sampler)
    if entry.family == "dit":
        settings.update(num_inference_steps=2 if dry else 50)
    elif "num_steps" in settings and dry:
        settings["num_steps"] = 2
    settings.pop("reference", None) if dry else None
    sampler = sampler_cls.from_mapping(settings) if hasattr(sampler_cls, "from_mapping") else sampler_cls(**settings)
    bsz = 2 if dry else 64
    ncls = int(getattr(getattr(base, "config", None), "num_classes", 10) or 10)
    labels = torch.arange(bsz, device=device) % ncls
    for mode in modes:
        if budget.left() < 60 and not dry:
            rows.append({"section": "sample", "case": f"{name} {mode}", "skipped": "time budget"})
            continue

        def one(mode=mode) -> dict[str, Any]:
            dtype, _, extra = mode.partition("+")
            model = base if dtype == "fp32" else _copy(base).to(_DT[dtype])
            if extra:
                compiled = torch.compile(model.forward, mode="reduce-overhead" if extra == "cudagraphs" else None)
                model.forward = compiled  # instance attribute: the sampler calls model(...)
            run = lambda: sampler.sample(model, labels, generator=torch.Generator(device=device).manual_seed(0))  # noqa: E731
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            warm, sec = _timed(run, device, 1)
            out = run()
            res = {"model": name, "mode": mode, "batch": bsz, "images_per_s": bsz / sec, "warmup_s": warm,
                   "out_dtype": str(out.dtype).split(".")[-1], "ok": bool(torch.isfinite(out.float()).all())}
            if device.type == "cuda":
                res["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            return res

        _record(rows, "sample", f"{name} {mode}", one)


# -- 3. training MFU -----------------------------------------------------------------------------------
def train_mfu(rows: list, device: torch.device, dry: bool) -> None:
    def one() -> dict[str, Any]:
        from torch.utils.flop_counter import FlopCounterMode

        entry = _entry("dit-digits" if dry else "dit-xl-2")
        model = _model(entry, device).train()
        cfg = model.config
        bsz = 2 if dry else 64
        shape = (bsz, cfg.in_channels, cfg.input_size, cfg.input_size)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        x = torch.randn(shape, device=device)
        y = torch.randint(0, cfg.num_classes, (bsz,), device=device)
        t = torch.randint(0, 1000, (bsz,), device=device)
        amp = torch.autocast(device.type, dtype=torch.bfloat16)

        def step() -> None:
            with amp:
                out = model(x, t, y)
                loss = (out[:, :cfg.in_channels].float() - x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        with FlopCounterMode(display=False) as fc:
            step()
        flops = fc.get_total_flops()
        warm, sec = _timed(step, device, 2 if dry else 10)
        achieved = flops / sec / 1e12
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        return {"model": entry.name, "batch": bsz, "step_s": sec, "tflops_per_step": flops / 1e12,
                "achieved_tflops": achieved, "peak_bf16_tflops": peak, "mfu": (achieved / peak) if peak else None,
                "ok": math.isfinite(achieved)}

    _record(rows, "train", "dit-xl-2 bf16 step" if not dry else "dit-digits bf16 step", one)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks that every section runs")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--budget-s", type=float, default=450.0, help="time budget; later cases are skipped past it")
    ap.add_argument("--sections", default="attention,mar,dit,maskgit,train")
    args = ap.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU")
        return 2
    device = torch.device("cpu" if dry else "cuda")
    if not dry:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are true fp32
    budget = Budget(args.budget_s)
    rows: list[dict[str, Any]] = []
    sections = set(args.sections.split(","))
    modes = ["fp32", "bf16"] if dry else ["fp32", "bf16", "fp16", "bf16+compile", "bf16+cudagraphs"]
    if "attention" in sections:
        check_attention(rows, device, dry)
    if "mar" in sections:
        sample_mar(rows, device, dry, modes, budget)
    if "dit" in sections:
        sample_family(rows, device, dry, "dit-digits" if dry else "dit-xl-2", modes[:4] if not dry else modes, budget)
    if "maskgit" in sections:
        sample_family(rows, device, dry, "maskgit-digits" if dry else "maskgit", modes[:4] if not dry else modes, budget)
    if "train" in sections:
        train_mfu(rows, device, dry)
    from mgen.bench.report import machine, write_report

    meta = {"dry_run": dry, "device": torch.cuda.get_device_name(0) if not dry else "cpu", "machine": machine(),
            "total_s": round(time.perf_counter() - budget.t0, 1)}
    write_report({"meta": meta, "rows": rows}, args.out, "results", title="mgen GPU check" + (" (dry run)" if dry else ""))
    failed = [r for r in rows if r.get("ok") is False]
    print(f"{len(rows)} cases, {len(failed)} failed, {meta['total_s']} s; wrote {args.out}/results.json")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
