"""`mgen eval`: FID / IS / KID / precision-recall of samples or a model, and the offline digits metrics.

    mgen eval --fake DIR --real DIR|NPZ --inception-weights W [--metrics fid,is,kid,pr] --json OUT
    mgen eval --real DIR --inception-weights W --save-stats REF.npz
    mgen eval --model NAME --num-samples 50000 --steps 64 --cfg 2.9 --real REF.npz --inception-weights W
    mgen eval --model mar-digits                      # digits-FID and class accuracy, fully offline
    accelerate launch --multi_gpu --num_processes N -m mgen eval --model NAME ...   # samples split over N processes
    torchrun --nproc-per-node N -m mgen eval --model NAME ...   # the same; CPU-only machines: gloo, GPUs: NCCL
    (on a CPU-only machine --multi_gpu still starts N CPU processes; accelerate's --cpu starts only one)

With ``--model``, samples go straight from the pipeline into the feature extractors (no PNGs). Sample i is drawn
from its own random stream (a seed made of --seed and i), and the feature extractors always see the same blocks of
16 consecutive samples, so the metrics are identical for every --batch-size and for any split over processes
(on the same device and thread count, as long as the sampler returns the same uint8 image for sample i at
every batch size: its batch-dependent float rounding, README "Errors and guarantees", can move a rare pixel by
one grey level). Feature shards (sized so that one takes about a minute) are saved in
``--work-dir`` as they are finished, so running the same command again after a crash or a kill resumes where
it stopped, with identical metrics. The JSON (written atomically, only when everything succeeded) records the
metrics, the model and sampler settings, the seeds and the versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from mgen.commands.options import DTYPES, add_recap_arguments, parse_dtype, recap_from_args
from mgen.errors import UserError
from mgen.eval.outputs import check_writable, write_json
from mgen.eval.streaming import FEATURE_BLOCK as BLOCK

HELP = "FID / IS / KID / precision-recall of samples or a model, and digits metrics"
MAX_SAMPLES = 10_000_000
MAX_STEPS = 10_000
MAX_CFG = 1000.0
#: integer options: (smallest, largest)
INT_RANGES = {"kid_subset_size": (2, 1_000_000), "kid_subsets": (1, 100_000), "isc_splits": (1, 100_000),
              "pr_k": (1, 1000), "metric_seed": (0, 2**32 - 1), "batch_size": (1, 100_000),
              "num_samples": (1, MAX_SAMPLES), "steps": (1, MAX_STEPS), "num_classes": (1, 1_000_000),
              "seed": (0, 2**31 - 1), "shard_size": (BLOCK, MAX_SAMPLES),
              "recap_cache_steps": (0, MAX_STEPS), "recap_pre_full_steps": (0, MAX_STEPS)}
#: float options: (smallest, largest, whether the smallest is allowed); every one must be finite
FLOAT_RANGES = {"cfg": (0.0, MAX_CFG, True), "recap_head_fast_ratio": (0.0, 1.0, False)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    parts = (__doc__ or "").split("\n\n")
    p.description = parts[0]
    p.epilog = " ".join(parts[2].replace("``", "").split())  # the batch-invariance / resume guarantees
    g = p.add_argument_group("inputs")
    g.add_argument("--fake", metavar="DIR", help="folder of generated images")
    g.add_argument("--real", metavar="DIR|NPZ", help="folder of real images, or reference statistics (.npz with mu, sigma)")
    g.add_argument("--model", metavar="NAME|PATH", help="sample from this model instead of reading --fake")
    g.add_argument("--weights", metavar="PATH", help="model weights (with --model)")
    g.add_argument("--inception-weights", metavar="PATH",
                   help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (never downloaded)")
    m = p.add_argument_group("metrics")
    m.add_argument("--metrics", default=None,
                   help="comma-separated: fid, is, kid, pr (default: fid,is,kid; fid,is with a .npz --real; "
                        "with --model: fid,is with --real, else is when --inception-weights is given)")
    m.add_argument("--kid-subset-size", type=int, default=1000, help="1..1000000 (default 1000)")
    m.add_argument("--kid-subsets", type=int, default=100, help="1..100000 (default 100)")
    m.add_argument("--isc-splits", type=int, default=10, help="1..100000 (default 10)")
    m.add_argument("--pr-k", type=int, default=3, help="neighbourhood size of precision/recall, 1..1000 (default 3)")
    m.add_argument("--metric-seed", type=int, default=2020,
                   help="IS shuffle / KID subsets seed, 0..2^32-1 (torch-fidelity's 2020)")
    m.add_argument("--digits", dest="digits", action="store_true", default=None,
                   help="also report digits-FID and class accuracy (default for *-digits models)")
    m.add_argument("--no-digits", dest="digits", action="store_false")
    m.add_argument("--digits-classifier", metavar="PATH", help="digits classifier weights (default: the shipped one)")
    s = p.add_argument_group("sampling (with --model)")
    s.add_argument("--num-samples", type=int, default=None,
                   help=f"number of samples, 1..{MAX_SAMPLES} (default 50000; 500, i.e. 50 per class, for digits models)")
    s.add_argument("--steps", type=int, default=None, help=f"sampling steps, 1..{MAX_STEPS} (default: the model's)")
    s.add_argument("--cfg", type=float, default=None,
                   help=f"guidance scale, finite, 0..{MAX_CFG:g} (default: the model's)")
    s.add_argument("--num-classes", type=int, default=None,
                   help="classes to cycle through, 1..1000000 (default: the model's)")
    s.add_argument("--seed", type=int, default=0,
                   help="0..2^31-1: sample i is drawn from its own random stream (seed splitmix64(seed) + i * 0x9E3779B97F4A7C15), so the "
                        "metrics are identical for every --batch-size and any number of processes")
    s.add_argument("--work-dir", metavar="DIR", help="feature shards (default: ./mgen-eval-<model>-<settings hash>)")
    s.add_argument("--shard-size", type=int, default=None,
                   help=f"samples per shard file, a multiple of {BLOCK} (default: what about a minute of "
                        "sampling gives, timed on the first batch; kept by a resumed run)")
    o = p.add_argument_group("run and output")
    o.add_argument("--batch-size", type=int, default=64,
                   help="samples per sampling call (--model; does not change the metrics), or images per "
                        "Inception call (--fake / --real); default 64")
    o.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    o.add_argument("--json", metavar="OUT", help="write the results here (atomically)")
    o.add_argument("--save-stats", metavar="NPZ", help="write mu/sigma of --real (a folder), or of the fake images / samples")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--dtype", choices=DTYPES, default=None,
                   help="--model: weights and compute precision (default fp32; part of the resume key)")
    add_recap_arguments(p)  # --sampler recap, --recap-cache-steps, --recap-pre-full-steps, --recap-head-fast-ratio


def _write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    write_json(path, obj)


def _versions() -> dict[str, str]:
    import torch
    import torch_fidelity

    from mgen import __version__

    return {"mgen": __version__, "torch_fidelity": torch_fidelity.__version__, "torch": torch.__version__,
            "metrics": "fid: Heusel et al. 2017, eq. 6; is: Salimans et al. 2016, torch-fidelity splits and "
                       "shuffle; kid: cubic polynomial kernel, unbiased MMD²; pr: Kynkäänniemi et al. 2019"}


def _file_id(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "sha256": h.hexdigest()}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option in range (and every float finite) before anything is loaded; limits in --help."""
    for name, (lo, hi) in INT_RANGES.items():
        v = getattr(args, name, None)
        if v is None:
            continue
        if not lo <= v <= hi:
            what = "must be positive" if v < 1 <= lo else f"must be in {lo}..{hi}"
            raise UserError(f"{_option(name)} {what}, got {v}")
    if getattr(args, "shard_size", None) is not None and args.shard_size % BLOCK:
        raise UserError(f"--shard-size must be a multiple of {BLOCK} (features are taken in blocks of {BLOCK} "
                        f"samples), got {args.shard_size}")
    for name, (lo, hi, lo_ok) in FLOAT_RANGES.items():
        v = getattr(args, name, None)
        if v is None:
            continue
        if not math.isfinite(v):
            raise UserError(f"{_option(name)} must be a finite number, got {v}")
        if not ((lo <= v) if lo_ok else (lo < v)) or v > hi:
            raise UserError(f"{_option(name)} must be in {'[' if lo_ok else '('}{lo:g}, {hi:g}], got {v}")


def check_device(device: str | None) -> None:
    """``--device``: a device name torch knows, and CUDA only where it is available."""
    if device is None:
        return
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {device!r}: not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _check_args(args: argparse.Namespace) -> None:
    check_numbers(args)
    check_device(args.device)
    if args.model and args.fake:
        raise UserError("give either --fake DIR or --model NAME, not both")
    if not args.model and not args.fake and not (args.save_stats and args.real):
        raise UserError("nothing to evaluate: give --fake DIR or --model NAME (or --real DIR --save-stats NPZ)")
    if not args.model:
        for name in ("num_samples", "steps", "cfg", "weights", "work_dir", "shard_size", "num_classes", "sampler",
                     "recap_cache_steps", "recap_pre_full_steps", "recap_head_fast_ratio"):
            if getattr(args, name, None) is not None:
                raise UserError(f"--{name.replace('_', '-')} only applies with --model")
    if args.save_stats and not str(args.save_stats).endswith(".npz"):
        raise UserError(f"--save-stats must name an .npz file, got {args.save_stats}")
    # outputs that cannot be written are refused now, not after the (slow) sampling and feature extraction
    if args.json:
        check_writable(args.json, "--json")
    if args.save_stats:
        check_writable(args.save_stats, "--save-stats")
    if args.work_dir:
        check_writable(args.work_dir, "--work-dir", folder=True)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.model:
        result = _run_model(args)
    else:
        result = _run_folders(args)
    if result is None:  # not the main process of a multi-process run
        return 0
    if args.json:
        _write_json(args.json, result)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _run_folders(args: argparse.Namespace) -> dict[str, Any]:
    from mgen.eval import fid as fidlib
    from mgen.eval.evaluation import _check_counts, check_same_kind, evaluate, is_stats_file, normalize_metrics
    from mgen.eval.inception import InceptionFeatures, resolve_inception_weights
    from mgen.eval.inputs import as_source

    progress = not args.no_progress
    default = "fid,is" if args.real and is_stats_file(args.real) else "fid,is,kid"  # KID needs real images
    metrics = normalize_metrics(args.metrics or default) if args.fake else []
    if args.save_stats and args.real and is_stats_file(args.real):
        raise UserError("--save-stats needs images (a --real folder), not a .npz")
    # validate every input before loading the network
    fake_src = as_source(args.fake, "fake") if args.fake else None
    real_is_npz = bool(args.real) and is_stats_file(args.real)
    if real_is_npz:
        if any(m in metrics for m in ("kid", "pr")):
            raise UserError("KID and precision/recall need real images (a folder), not reference statistics: "
                            "use --metrics fid,is with a .npz")
        fidlib.load_stats(args.real)
    real_src = as_source(args.real, "real") if args.real and not real_is_npz else None
    if fake_src is not None:
        check_same_kind(fake_src, real_src)
        _check_counts(metrics, fake_src.num_images, real_src.num_images if real_src is not None else None,
                      args.kid_subset_size, args.isc_splits, args.pr_k)
    weights = resolve_inception_weights(args.inception_weights)
    extractor = InceptionFeatures(weights, args.device)
    result: dict[str, Any] = {}
    if fake_src is not None:
        real_in = args.real if real_is_npz else real_src
        needs_real = any(m in metrics for m in ("fid", "kid", "pr"))
        r = evaluate(fake_src, real_in if needs_real else None, metrics=metrics, kid_subset_size=args.kid_subset_size,
                     kid_subsets=args.kid_subsets, isc_splits=args.isc_splits, pr_k=args.pr_k,
                     batch_size=args.batch_size, seed=args.metric_seed, progress=progress, extractor=extractor,
                     return_features=bool(args.save_stats))
        feats = r.pop("features", None)
        result.update(r)
        if args.save_stats:
            use = feats["real"] if feats and feats.get("real") is not None else feats["fake"]
            fidlib.save_stats(args.save_stats, *fidlib.statistics(use["2048"]))
    elif args.save_stats:
        feats = extractor.extract(real_src.batches(args.batch_size), total=real_src.num_images, progress=progress)
        fidlib.save_stats(args.save_stats, *fidlib.statistics(feats["2048"]))
        result["num_real"] = int(feats["2048"].shape[0])
    if args.save_stats:
        result["saved_stats"] = str(args.save_stats)
    result["fake"] = args.fake
    result["real"] = args.real
    result["inception_weights"] = _file_id(weights)
    result["settings"] = {"metrics": metrics, "kid_subset_size": args.kid_subset_size, "kid_subsets": args.kid_subsets,
                          "isc_splits": args.isc_splits, "pr_k": args.pr_k, "metric_seed": args.metric_seed,
                          "batch_size": args.batch_size}
    result["versions"] = _versions()
    return result


def _is_digits_model(name: str) -> bool:
    return Path(str(name)).name.endswith("-digits")


def _num_classes(pipe: Any, entry: Any, digits: bool) -> int | None:
    for obj in (pipe, getattr(pipe, "transformer", None), getattr(pipe, "generator", None),
                getattr(pipe, "model", None)):
        for attr in ("num_classes", "class_num"):
            v = getattr(obj, attr, None) if obj is not None else None
            if isinstance(v, int) and v > 0:
                return v
    arch = dict(getattr(entry, "arch", {}) or {})
    for key in ("num_classes", "class_num"):
        if isinstance(arch.get(key), int):
            return arch[key]
    return 10 if digits else None


def _load_pipeline(model: str, weights: str | None, device: Any, dtype: Any = None) -> Any:
    import torch

    from mgen.pipelines import load_pipeline

    extra = {"torch_dtype": dtype} if dtype is not None and dtype != torch.float32 else {}
    return load_pipeline(model, weights=weights, device=device, **extra)


def _run_model(args: argparse.Namespace) -> dict[str, Any] | None:
    import torch

    from mgen.eval import fid as fidlib
    from mgen.eval.evaluation import is_stats_file, metrics_from_features, normalize_metrics
    from mgen.eval.streaming import _accelerate_state, images_to_uint8, pipeline_sample_fn, stream_features

    digits = _is_digits_model(args.model) if args.digits is None else args.digits
    progress = not args.no_progress
    rank, world, barrier = _accelerate_state(args.device)
    if world > 1:
        from accelerate import PartialState

        device = PartialState().device  # cpu for a CPU (gloo) run, this process's GPU otherwise
    else:
        device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # which Inception metrics: only when there is something to compare with (or asked for)
    if args.metrics:
        metrics = normalize_metrics(args.metrics)
    elif args.real:
        metrics = ["fid", "is"]
    elif args.inception_weights:
        metrics = ["is"]
    else:
        metrics = []
    if not metrics and not digits:
        raise UserError(f"nothing to compute for {args.model}: give --real NPZ|DIR and --inception-weights "
                        "(or --metrics is), or --digits")
    if any(m in metrics for m in ("fid", "kid", "pr")) and not args.real:
        raise UserError("FID/KID/precision-recall need --real (a folder or a reference .npz)")
    real_stats = None
    real_src = None
    if args.real and metrics:
        if is_stats_file(args.real):
            real_stats = fidlib.load_stats(args.real)
        else:
            from mgen.eval.inputs import as_source

            real_src = as_source(args.real, "real")
    num_samples = args.num_samples if args.num_samples is not None else (500 if digits else 50000)
    from mgen.eval.evaluation import _check_counts

    _check_counts(metrics, num_samples, real_src.num_images if real_src is not None else None,
                  args.kid_subset_size, args.isc_splits, args.pr_k)
    if digits and num_samples < 2:
        raise UserError(f"digits-FID needs at least 2 samples, got --num-samples {num_samples}")
    from mgen.resolver import resolve

    spec = resolve(args.model, args.weights, missing_ok=True)  # missing weights: named by the loader below
    fam, fam_entry = spec.family, spec.entry
    recap = recap_from_args(args, fam, args.steps if args.steps is not None else
                            (fam_entry.sampler.get("num_steps") if fam_entry is not None else None))
    dtype = parse_dtype(args.dtype, device)
    pipe = _load_pipeline(args.model, args.weights, device, dtype)  # fails early (one line) when weights are missing
    extractor = None
    weights_id = None
    if metrics:
        from mgen.eval.inception import InceptionFeatures, resolve_inception_weights

        w = resolve_inception_weights(args.inception_weights)
        weights_id = _file_id(w)
        extractor = InceptionFeatures(w, device)
    classifier = None
    if digits:
        from mgen.eval.digits import load_classifier

        classifier = load_classifier(args.digits_classifier, device)
    entry = None
    try:
        from mgen import registry

        entry = registry.get(args.model) if not os.path.exists(args.model) else None
    except Exception:  # a path, or an unregistered name the pipeline loader understood
        entry = None
    num_classes = args.num_classes if args.num_classes is not None else _num_classes(pipe, entry, digits)
    sample_fn = pipeline_sample_fn(pipe, args.steps, args.cfg, device=device, **({"recap": recap} if recap else {}))

    def extract(images: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if extractor is not None:
            out.update(extractor(images_to_uint8(images)))
        if classifier is not None:
            with torch.inference_mode():
                f = classifier.features(images.to(device))
                out["digits_features"] = f.float().cpu()
                out["digits_logits"] = classifier.fc2(f).float().cpu()
        out["_size"] = torch.tensor([list(images.shape[-2:])] * images.shape[0])
        return out

    sampler_settings = {"steps": args.steps, "cfg": args.cfg, "num_classes": num_classes}
    if recap:
        sampler_settings["recap"] = recap
    meta = {"model": args.model, "weights": args.weights, "sampler": sampler_settings, "dtype": args.dtype or "fp32",
            "features": sorted((["inception"] if extractor is not None else []) + (["digits"] if digits else [])),
            "inception_weights": weights_id["sha256"] if weights_id else None}
    # (the batch size and the number of processes do not change the samples, so they are not part of the key)
    key = hashlib.sha256(json.dumps({**meta, "n": num_samples, "seed": args.seed},
                                    sort_keys=True).encode()).hexdigest()[:10]
    work_dir = args.work_dir or f"mgen-eval-{Path(str(args.model)).name}-{key}"
    feats = stream_features(sample_fn, extract, num_samples, work_dir, num_classes=num_classes, seed=args.seed,
                            batch_size=args.batch_size, shard_size=args.shard_size, meta=meta, progress=progress,
                            rank=rank, world_size=world, barrier=barrier)
    if feats is None:
        return None
    try:
        shard_size = json.loads((Path(work_dir) / "meta.json").read_text()).get("shard_size")
    except (OSError, ValueError):
        shard_size = args.shard_size
    result: dict[str, Any] = {}
    if metrics:
        real_feats = None
        if real_src is not None:
            real_feats = extractor.extract(real_src.batches(args.batch_size), total=real_src.num_images,
                                           progress=progress, desc="real")
        result.update(metrics_from_features(feats, real_stats if real_stats is not None else real_feats, metrics,
                                            args.kid_subset_size, args.kid_subsets, args.isc_splits, args.pr_k,
                                            args.metric_seed))
        if args.save_stats:
            fidlib.save_stats(args.save_stats, *fidlib.statistics(feats["2048"]))
            result["saved_stats"] = str(args.save_stats)
    if digits:
        from mgen.eval.digits import digits_metrics_from_outputs

        size = tuple(int(v) for v in feats["_size"][0])
        labels = feats["label"] if num_classes else None
        result.update(digits_metrics_from_outputs(feats["digits_features"], feats["digits_logits"], labels, size,
                                                  classifier))
    defaults = getattr(pipe, "defaults", None)
    result.update({
        "model": args.model, "weights": args.weights, "num_samples": num_samples, "sampler": sampler_settings,
        "sampler_defaults": dict(defaults) if isinstance(defaults, dict) else None,
        "seed": args.seed,
        "sample_seeds": "one torch.Generator per sample i, seeded (splitmix64(seed) + i * 0x9E3779B97F4A7C15) mod 2^64 "
                        f"for i in 0..{num_samples - 1}",
        "num_processes": world, "shard_size": shard_size, "feature_block": BLOCK,
        "labels": "class floor(i * num_classes / num_samples)" if num_classes else None,
        "batch_size": args.batch_size, "work_dir": str(work_dir), "real": args.real,
        "inception_weights": weights_id,
        "settings": {"metrics": metrics, "kid_subset_size": args.kid_subset_size, "kid_subsets": args.kid_subsets,
                     "isc_splits": args.isc_splits, "pr_k": args.pr_k, "metric_seed": args.metric_seed},
        "versions": _versions(),
    })
    return result
