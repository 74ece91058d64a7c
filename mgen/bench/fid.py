"""``mgen bench fid``: Inception feature extraction speed, mgen vs torch-fidelity, same folder, same run.

    mgen bench fid --num 128 --repeats 2 --threads 1 --batch-size 32 --out benchmarks/fid


Both sides run the same network (torch-fidelity's ``FeatureExtractorInceptionV3``) with the same weights on
the same device and batch size; what differs is the input path and the execution: torch-fidelity reads
the folder through its ``ImagesPathDataset`` + ``DataLoader`` (worker processes) and runs the model as is;
mgen decodes in a thread pool with prefetch and runs the model in ``channels_last`` under
``inference_mode``. Each side is warmed up on one batch, then timed over the whole folder ``--repeats``
times, alternating sides; the median is reported. Speed does not depend on the weight values, so
without ``--inception-weights`` a seeded random-init file is used (the result says so).

:func:`run` writes ``fid.json`` + ``fid.md`` to ``--out`` through :func:`mgen.bench.report.write_report` and returns
that result: ``meta`` (what was measured, where, the ratio and the feature agreement, the options) and one row per
side, plus ``written`` (the two paths).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mgen.bench.report import machine, write_report
from mgen.errors import UserError

NAME = "fid"
TITLE = "Inception feature extraction: mgen vs torch-fidelity"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``mgen bench fid``."""
    p.add_argument("--folder", metavar="DIR", help="images to read (default: --num digits PNGs written to a temp dir)")
    p.add_argument("--num", type=int, default=256, help="number of generated PNGs when no --folder (default 256)")
    p.add_argument("--size", type=int, default=32, help="side of the generated PNGs (default 32)")
    p.add_argument("--inception-weights", metavar="PATH", help="default: a random-init file (speed only)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default="bench", help="folder for fid.json and fid.md (mgen bench)")


def _digits_folder(folder: Path, n: int, size: int) -> Path:
    import torch
    import torch.nn.functional as F

    from mgen.eval.digits import digits_split
    from mgen.images import save_png, to_pil

    x_tr, _, x_te, _ = digits_split()
    x = torch.cat([x_tr, x_te])
    x = x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1).repeat(1, 3, 1, 1)
    for i, im in enumerate(to_pil(x)):
        save_png(im, folder / f"{i:06d}.png")
    return folder


def bench_fid(folder: str | Path, weights: str | Path, batch_size: int = 64, device: str | None = None,
              repeats: int = 3) -> dict[str, Any]:
    """Images/s of mgen's and torch-fidelity's feature extraction on ``folder`` (median of ``repeats``)."""
    import torch
    from torch_fidelity.datasets import ImagesPathDataset, TransformPILtoRGBTensor
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from mgen.eval.inception import InceptionFeatures
    from mgen.eval.inputs import folder_source, list_image_files

    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    ours = InceptionFeatures(weights, dev)
    theirs = create_feature_extractor("inception-v3-compat", ["2048", "logits_unbiased"], cuda=cuda,
                                      feature_extractor_weights_path=str(weights), verbose=False)
    files = list_image_files(folder)  # the same files on both sides (torch-fidelity's glob would add hidden ones)
    dataset = ImagesPathDataset(files, TransformPILtoRGBTensor())

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def run_ours() -> dict[str, Any]:
        src = folder_source(folder)
        return ours.extract(src.batches(batch_size), total=src.num_images)

    def run_theirs() -> dict[str, Any]:
        return get_featuresdict_from_dataset(dataset, theirs, batch_size, cuda, False, False)

    # warm-up (one batch each), then alternate
    with torch.inference_mode():
        first = next(folder_source(folder).batches(batch_size))
        ours(first)
        theirs(first.to(dev))
    t_ours, t_theirs = [], []
    outs: dict[int, dict[str, Any]] = {}
    for _ in range(max(1, repeats)):
        for i, (fn, acc) in enumerate(((run_ours, t_ours), (run_theirs, t_theirs))):
            sync()
            t0 = time.perf_counter()
            outs[i] = fn()
            sync()
            acc.append(time.perf_counter() - t0)
    a, b = outs[0], outs[1]
    max_diff = float((a["2048"] - b["2048"]).abs().max() / b["2048"].abs().max().clamp_min(1e-12))
    n = len(files)
    ours_ips, theirs_ips = n / statistics.median(t_ours), n / statistics.median(t_theirs)
    return {"bench": "fid-features", "images": n, "batch_size": batch_size, "device": str(dev),
            "torch_threads": torch.get_num_threads(),
            "mgen_images_per_s": ours_ips, "torch_fidelity_images_per_s": theirs_ips,
            "speedup": ours_ips / theirs_ips, "max_rel_feature_diff": max_diff, "repeats": len(t_ours),
            "median_s_mgen": statistics.median(t_ours), "median_s_torch_fidelity": statistics.median(t_theirs)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Inception feature extraction images/s: mgen vs torch-fidelity on the same folder, same run."""
    import torch

    from mgen.eval.inception import random_inception_weights, resolve_inception_weights

    if args.batch_size < 1 or args.repeats < 1 or args.num < 1 or args.size < 8:
        raise UserError("--batch-size, --repeats, --num must be positive and --size at least 8")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be positive, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.folder:
        from mgen.eval.inputs import list_image_files

        list_image_files(args.folder)  # one clear line for a missing / empty folder
    with tempfile.TemporaryDirectory(prefix="mgen-bench-fid-") as tmp:
        folder = Path(args.folder) if args.folder else _digits_folder(Path(tmp) / "imgs", args.num, args.size)
        if args.inception_weights:
            weights, random_w = resolve_inception_weights(args.inception_weights), False
        else:
            weights, random_w = random_inception_weights(Path(tmp) / "inception-random.pth", seed=0,
                                                        calibration_size=299), True
        r = bench_fid(folder, weights, args.batch_size, args.device, args.repeats)
    meta = {"bench": r["bench"], "images": r["images"], "batch_size": r["batch_size"], "device": r["device"],
            "torch_threads": r["torch_threads"], "repeats": r["repeats"], "speedup": r["speedup"],
            "max_rel_feature_diff": r["max_rel_feature_diff"],
            "folder": str(args.folder) if args.folder else f"{args.num} digits PNGs at {args.size}px (temporary)",
            "inception_weights": "random init (speed only)" if random_w else str(weights),
            "machine": machine()}
    rows = [{"side": "mgen", "images_per_s": r["mgen_images_per_s"], "median_s": r["median_s_mgen"]},
            {"side": "torch-fidelity", "images_per_s": r["torch_fidelity_images_per_s"],
             "median_s": r["median_s_torch_fidelity"]}]
    meta["args"] = {k: v for k, v in sorted(vars(args).items()) if isinstance(v, (str, int, float, bool, type(None)))}
    result: dict[str, Any] = {"meta": meta, "rows": rows}
    paths = write_report(result, args.out, NAME, title=TITLE)
    result["written"] = [str(p) for p in paths]
    return result
