"""``mgen bench sample``: sampling speed, one run, one table.

MAR models: one row per *mode*, timed in alternating rounds in the same process so that the ratios are
measured side by side (on a shared machine absolute numbers move with the load, ratios much less):

* ``fp32``          — exact mode (the official arithmetic up to float rounding);
* ``bf16`` / ``fp16`` — ``model.to(dtype)`` with the unchanged :class:`~mgen.samplers.mar.MARSampler`
  (float32 kept where it matters, see ``MAR._keep_in_fp32_modules``);
* ``bf16+compile``  — the same with ``compile=True`` (torch.compile of the transformer and the head step);
* ``bf16+recap``    — the same wrapped in :class:`mgen.samplers.recap.ReCAP` (defaults, ``--recap-*`` options);
  any mode may carry ``+compile`` and/or ``+recap``.

Each row has images/s, seconds per image, the transformer / diffusion-head split, the one-off warm-up (which
includes compilation) and the peak memory of that mode (CUDA: ``max_memory_allocated``; CPU: the peak resident
set above the level before the mode's runs, sampled every 5 ms). MAR rows time the sampler alone (latents, no
tokenizer decode).

Other families (DiT, RAE-DiT, MaskGIT, ...) keep the earlier behaviour: the pipeline is timed once per attention
backend (DiT / RAE-DiT) with an optional autocast ``--dtype``.

    mgen bench sample --model mar-b --random-weights --steps 16 --batch-size 2 --head-steps 100 --threads 2
    mgen bench sample --model mar-digits --modes fp32 bf16 bf16+recap
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import platform
import shlex
import sys
import threading
import time
from typing import Any, Iterator

from mgen.bench.report import machine, write_report
from mgen.errors import UserError

DEFAULT_MAR_MODES = ("fp32", "bf16", "bf16+compile", "bf16+recap")
_DTYPES = ("fp32", "bf16", "fp16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``mgen bench sample``."""
    p.add_argument("--model", default="mar-digits", help="model name or saved pipeline folder (default: mar-digits)")
    p.add_argument("--weights", default=None, help="generator weights file")
    p.add_argument("--tokenizer-weights", default=None)
    p.add_argument("--random-weights", action="store_true",
                   help="MAR, DiT, RAE-DiT: time randomly initialised weights of the named config (no files needed; no decoding)")
    p.add_argument("--steps", type=int, default=16, help="generation steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's config)")
    p.add_argument("--head-steps", type=int, default=None, help="MAR: diffusion-head steps")
    p.add_argument("--repeats", type=int, default=3, help="timed batches per mode (after one warm-up batch)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=_DTYPES, default=None,
                   help="non-MAR families: autocast dtype; MAR: shorthand for --modes DTYPE")
    p.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                   help=f"MAR: modes timed side by side, DTYPE[+compile][+recap] (default: {' '.join(DEFAULT_MAR_MODES)})")
    p.add_argument("--recap-cache-steps", type=int, default=1, help="MAR +recap: cheap steps after each full step")
    p.add_argument("--recap-pre-full-steps", type=int, default=0, help="MAR +recap: full steps before caching starts")
    p.add_argument("--recap-head-fast-ratio", type=float, default=None, help="MAR +recap: head-step ratio of cheap steps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench", help="folder for sample.json and sample.md")
    p.add_argument("--attn-backends", nargs="+", default=None, metavar="NAME",
                   help="DiT / RAE-DiT: attention backends timed one after another (default: all available)")


@dataclasses.dataclass(frozen=True)
class Mode:
    """One MAR row: weights dtype, torch.compile, ReCAP."""

    dtype: str = "fp32"
    compile: bool = False
    recap: bool = False

    @classmethod
    def parse(cls, text: str) -> "Mode":
        parts = [t.strip().lower() for t in text.replace(",", "+").split("+") if t.strip()]
        dtype = "fp32"
        compile_ = recap = False
        for t in parts:
            if t in _DTYPES or t == "exact":
                dtype = "fp32" if t == "exact" else t
            elif t == "compile":
                compile_ = True
            elif t == "recap":
                recap = True
            else:
                raise UserError(f"--modes: unknown part {t!r} in {text!r}; use DTYPE[+compile][+recap], DTYPE one of "
                                f"{', '.join(_DTYPES)}")
        return cls(dtype, compile_, recap)

    @property
    def name(self) -> str:
        return self.dtype + ("+compile" if self.compile else "") + ("+recap" if self.recap else "")


class _PeakRSS:
    """Peak resident set size (bytes) of this process while the context is open, sampled every 5 ms."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> "_PeakRSS":
        self.base = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


@contextlib.contextmanager
def _peak_memory(device: Any) -> Iterator[dict[str, float]]:
    import torch

    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    try:
        watch = _PeakRSS()
    except ImportError:  # psutil is optional: the process-wide peak then
        import resource

        yield out
        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return
    with watch:
        yield out
    out["peak_memory_mb"] = (watch.peak - watch.base) / 2**20


def _device(args: argparse.Namespace) -> Any:
    import torch

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    return device


def _check_common(args: argparse.Namespace) -> None:
    if not 1 <= args.steps <= 256:
        raise UserError(f"--steps must be in 1..256, got {args.steps}")
    if args.batch_size < 1 or args.repeats < 1:
        raise UserError("--batch-size and --repeats must be >= 1")
    if args.head_steps is not None and not 1 <= args.head_steps <= 1000:
        raise UserError(f"--head-steps must be in 1..1000, got {args.head_steps}")


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, for the report (``mgen bench sample ...``)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and os.path.basename(argv[0]) in ("mgen", "__main__.py", "cli.py"):
        argv = ["mgen"] + argv[1:]
    return " ".join(shlex.quote(a) for a in argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Sampling speed on this machine (MAR: fp32 / bf16 / +compile / +ReCAP side by side; others: per attention
    backend); writes ``sample.json`` + ``sample.md`` to ``--out`` through :func:`mgen.bench.report.write_report`."""
    import torch

    _check_common(args)
    family, entry = _family(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args)
    if _has_head(family):  # a generator with a diffusion head (MAR): fp32 / bf16 / compile / ReCAP side by side
        result = _run_mar(args, entry, device)
    else:
        result = _run_pipeline(args, family, device)
    result["meta"]["command"] = command_line()
    paths = write_report(result, args.out, "sample", title=f"mgen bench sample: {args.model}")
    result["written"] = [str(p) for p in paths]
    return result


# -- MAR -------------------------------------------------------------------------------------------
def _family(args: argparse.Namespace) -> tuple[Any, Any]:
    """(Family, registry entry or None) of ``--model`` (with --random-weights, a name whose weights are missing)."""
    from mgen.resolver import resolve

    spec = resolve(args.model, args.weights, missing_ok=bool(args.random_weights))
    return spec.family, spec.entry


def _has_head(family: Any) -> bool:
    from mgen.samplers.settings import SamplerSettings

    return family.sampler is not None and "head_steps" in SamplerSettings.for_sampler(family.sampler).allowed()


def _mar_model(args: argparse.Namespace, entry: Any, device: Any) -> Any:
    import torch

    if args.random_weights:
        if entry is None:
            raise UserError("--random-weights needs a named model (mar-b, mar-l, mar-h, mar-digits)")
        from mgen.families import get_family

        torch.manual_seed(args.seed)
        return get_family(entry.family).model_class().from_arch(entry.arch).eval().to(device)
    from mgen.models import load_model

    return load_model(args.model, weights=args.weights).eval().to(device)


def _mar_modes(args: argparse.Namespace) -> list[Mode]:
    texts = args.modes or ([args.dtype] if args.dtype else list(DEFAULT_MAR_MODES))
    modes = [Mode.parse(t) for t in texts]
    if len({m.name for m in modes}) != len(modes):
        raise UserError(f"--modes: a mode is named twice ({' '.join(texts)})")
    return modes


def _check_dtype(name: str, device: Any) -> None:
    import torch

    if name == "fp16" and device.type == "cpu":
        try:
            torch.nn.functional.linear(torch.ones(2, 2, dtype=torch.float16), torch.ones(2, 2, dtype=torch.float16))
        except RuntimeError:
            raise UserError("fp16 is not supported by this CPU build of torch; use bf16") from None
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{torch.cuda.get_device_name(device)} has no bf16 support; use fp16")


def _run_mar(args: argparse.Namespace, entry: Any, device: Any) -> dict[str, Any]:
    import torch

    from mgen.samplers.mar import MARSampler

    modes = _mar_modes(args)
    for m in modes:
        _check_dtype(m.dtype, device)
    base_model = _mar_model(args, entry, device)
    defaults = dict(getattr(entry, "sampler", None) or {})
    settings = dict(num_steps=args.steps, cfg=float(args.cfg if args.cfg is not None else defaults.get("cfg", 1.0)),
                    cfg_schedule=defaults.get("cfg_schedule", "linear"),
                    temperature=float(defaults.get("temperature", 1.0)),
                    head_steps=int(args.head_steps or defaults.get("head_steps", 100)))
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    models = {"fp32": base_model}
    for m in modes:
        if m.dtype not in models:
            models[m.dtype] = copy.deepcopy(base_model).to(dtypes[m.dtype])
    samplers: dict[str, Any] = {}
    for m in modes:
        s = MARSampler(**settings, compile=m.compile)
        if m.recap:
            from mgen.samplers.recap import ReCAP

            s = ReCAP(s, pre_full_steps=args.recap_pre_full_steps, cache_steps=args.recap_cache_steps,
                      head_fast_ratio=args.recap_head_fast_ratio)
        samplers[m.name] = s
    labels = torch.arange(args.batch_size) % int(base_model.num_classes)

    def once(m: Mode, seed: int) -> dict[str, float]:
        s = samplers[m.name]
        g = torch.Generator(device=device).manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        s.sample(models[m.dtype], labels.to(device), generator=g, profile=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings = s.base.timings if m.recap else s.timings
        return {"total_s": time.perf_counter() - t0, **timings}

    rows: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, float]]] = {m.name: [] for m in modes}
    mem: dict[str, float] = {}
    for m in modes:  # warm-up (compilation happens here), memory measured on it
        with _peak_memory(device) as peak:
            t0 = time.perf_counter()
            once(m, args.seed)
            warm = time.perf_counter() - t0
        mem[m.name] = peak.get("peak_memory_mb", float("nan"))
        rows[m.name] = {"mode": m.name, "warmup_s": round(warm, 3)}
    for r in range(args.repeats):  # alternating rounds: every mode sees the same machine load
        for m in modes:
            runs[m.name].append(once(m, args.seed + 1 + r))
    ref = None
    out_rows = []
    for m in modes:
        rs = runs[m.name]
        total = sorted(x["total_s"] for x in rs)[len(rs) // 2]  # median
        per_img = total / args.batch_size
        row = rows[m.name]
        row.update(images_per_s=round(args.batch_size / total, 4), s_per_image=round(per_img, 4),
                   transformer_s_per_image=round(_median([x["transformer_s"] for x in rs]) / args.batch_size, 4),
                   head_s_per_image=round(_median([x["head_s"] for x in rs]) / args.batch_size, 4),
                   peak_memory_mb=round(mem[m.name], 1))
        if ref is None:
            ref = per_img
        row["speedup_vs_first"] = round(ref / per_img, 3)
        out_rows.append(row)
    meta = {"bench": "sample", "model": args.model, "family": entry.family if entry is not None else None, "random_weights": bool(args.random_weights),
            "device": str(device), "device_name": _device_name(device), "threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "repeats": args.repeats, **settings,
            "timed": "sampler only (latents, no decode); median of the timed rounds, modes alternating",
            "recap": {"pre_full_steps": args.recap_pre_full_steps, "cache_steps": args.recap_cache_steps,
                      "head_fast_ratio": args.recap_head_fast_ratio} if any(m.recap for m in modes) else None,
            "machine": machine()}
    return {"meta": meta, "rows": out_rows}


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def _device_name(device: Any) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


# -- other families (the earlier `mgen bench sample`) -------------------------------------------------
def _load_for_bench(args: argparse.Namespace, family: Any, device: Any) -> Any:
    """The pipeline to time: loaded by name, or (``--random-weights``) the family's pipeline around a randomly
    initialised model of the named config, without a tokenizer (latents are timed, not decoded)."""
    from mgen.pipelines import load_pipeline

    if args.random_weights:
        import torch

        from mgen import registry
        from mgen.samplers.settings import SamplerSettings

        entry = registry.get(args.model)
        torch.manual_seed(args.seed)
        model = family.model_class().from_arch(entry.arch).eval()
        cls = family.pipeline_class()
        settings = SamplerSettings.for_sampler(family.sampler, dict(entry.sampler))
        pipe = cls(**{cls.model_component: model, cls.tokenizer_component: None, "scheduler": settings})
        return pipe.to(device)
    return load_pipeline(args.model, weights=args.weights, tokenizer_weights=args.tokenizer_weights, device=device)


def _attention_backends(args: argparse.Namespace, pipe: Any) -> list[str | None]:
    """A generator with a switchable attention backend (DiT / RAE-DiT): the backends timed one after another
    (``--attn-backends``, default all available); others: ``[None]``, one timing with the model's own backend."""
    if not hasattr(getattr(pipe, pipe.model_component), "attn_backend"):
        return [None]
    from mgen.nn.attention import available_backends, resolve_backend

    backends = list(getattr(args, "attn_backends", None) or available_backends())
    for b in backends:
        if b == "auto":
            raise UserError("--attn-backends: name concrete backends (sdpa, math, xformers)")
        resolve_backend(b)  # unknown or unavailable backend -> one clear line
    return backends


def _run_pipeline(args: argparse.Namespace, family: str, device: Any) -> dict[str, Any]:
    """Sampling speed of a pipeline: images/s and seconds per step, once per attention backend (DiT / RAE-DiT)."""
    import torch

    if args.modes:
        raise UserError("--modes is for MAR models; use --dtype for this family")
    pipe = _load_for_bench(args, family, device)
    backends = _attention_backends(args, pipe)
    labels = torch.arange(args.batch_size) % int(getattr(pipe, "num_classes", 1) or 1)
    dname = args.dtype or "fp32"
    _check_dtype(dname, device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dname]
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
    out_type = "latent" if args.random_weights else "pt"
    kwargs: dict[str, Any] = {"num_inference_steps": args.steps, "output_type": out_type}
    if args.cfg is not None:
        kwargs["guidance_scale"] = args.cfg
    meta: dict[str, Any] = {
        "bench": "sample", "model": args.model, "family": family.name, "pipeline": type(pipe).__name__,
        "random_weights": bool(args.random_weights), "device": str(device), "device_name": _device_name(device),
        "threads": torch.get_num_threads(), "dtype": dname, "batch_size": args.batch_size, "steps": args.steps,
        "repeats": args.repeats, "machine": machine()}
    n_evals = args.steps
    sampler = getattr(pipe, "sampler", None)
    if backends != [None] and sampler is not None and dataclasses.is_dataclass(sampler):
        sampler = dataclasses.replace(sampler, num_inference_steps=args.steps,
                                      **({"guidance_scale": args.cfg} if args.cfg is not None else {}))
        n_evals = args.steps - 1 if getattr(sampler, "time_grid", "uniform") == "rae" else args.steps
        meta.update(sampler_steps=n_evals, method=getattr(sampler, "method", None), cfg=sampler.guidance_scale,
                    decoded=out_type != "latent")

    def once(seed: int) -> float:
        g = torch.Generator(device=device).manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast:
            pipe(class_labels=labels.to(device), generator=g, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    rows = []
    transformer = getattr(pipe, "transformer", None)
    previous = getattr(transformer, "attn_backend", None)
    try:
        for b in backends:
            if b is not None:
                transformer.attn_backend = b
            once(args.seed)  # warm-up
            with _peak_memory(device) as peak:
                runs = [once(args.seed + 1 + i) for i in range(args.repeats)]
            total = _median(runs)
            rows.append({"attn_backend": b or "default", "seconds_per_batch": round(total, 4),
                         "images_per_s": round(args.batch_size / total, 3),
                         "seconds_per_step": round(total / max(1, n_evals), 5),
                         "peak_memory_mb": round(peak.get("peak_memory_mb", float("nan")), 1)})
    finally:
        if backends != [None] and transformer is not None:
            transformer.attn_backend = previous
    return {"meta": meta, "rows": rows}
