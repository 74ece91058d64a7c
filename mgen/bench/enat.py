"""``mgen bench enat``: ENAT vs MaskGIT — generator FLOPs per image and images/s for a full decode (ENAT paper,
Ni et al. 2024, Tables 1–2: "a large compute reduction at equal quality").

Both generators run on the same token grid (16×16 codes from a 1024-entry VQGAN, as on ImageNet 256),
the same number of decoding steps (8) and classifier-free guidance (two branches per step), with random
weights (FLOPs and speed do not depend on the values). Rows:

* ``maskgit``: :class:`mgen.models.maskgit.MaskGITTransformer` + :class:`~mgen.samplers.maskgit.MaskGITSampler`;
* ``enat``: :class:`mgen.models.enat.ENAT` + :class:`~mgen.samplers.enat.ENATSampler` with feature reuse;
* ``enat-no-reuse``: the same ENAT recomputing every visible token at every step (spatial
  disentanglement only), to separate the two savings.

FLOPs are counted by :func:`mgen.bench.flops.count_flops` over one whole decode of one image. images/s is
wall-clock for a batch (after one warm-up decode on GPU; on CPU the FLOP-counting decode warms up).

Sizes: ``small`` pairs a MaskGIT of width 512 and 12 blocks with an ENAT of width 512 and 10 + 2 blocks
(equal width and depth; ENAT's 8-vector adaLN and two-way keys/values make it ~1.9x the parameters);
``matched`` pairs that ENAT with a MaskGIT of similar parameter count (768 wide, 12 blocks); ``paper`` pairs
the registry's ``maskgit`` (768 wide, 24 blocks) with ``enat-l`` (1024 wide, 22 + 2 blocks); ``tiny`` is for tests.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from mgen import registry
from mgen.bench.flops import count_flops
from mgen.bench.report import ChartPoint, machine, write_chart, write_report
from mgen.errors import UserError
from mgen.models.enat import ENAT
from mgen.models.maskgit import MaskGITTransformer
from mgen.samplers.enat import ENATSampler
from mgen.samplers.maskgit import MaskGITSampler

NAME = "enat_vs_maskgit"  # report file stem

SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "small": (
        dict(grid_size=16, hidden_dim=512, depth=12, heads=8, mlp_dim=2048, codebook_size=1024, mask_token_id=1024, num_classes=1000),
        dict(grid_size=16, hidden_dim=512, enc_depth=10, dec_depth=2, heads=8, codebook_size=1024, num_classes=1000),
    ),
    "matched": (  # similar parameter counts: MaskGIT 768 x 12 (~88M) vs ENAT 512 x (10 + 2) (~75M)
        dict(grid_size=16, hidden_dim=768, depth=12, heads=12, mlp_dim=3072, codebook_size=1024, mask_token_id=1024, num_classes=1000),
        dict(grid_size=16, hidden_dim=512, enc_depth=10, dec_depth=2, heads=8, codebook_size=1024, num_classes=1000),
    ),
    "tiny": (
        dict(grid_size=8, hidden_dim=64, depth=3, heads=4, mlp_dim=256, codebook_size=64, mask_token_id=64, num_classes=10),
        dict(grid_size=8, hidden_dim=64, enc_depth=2, dec_depth=1, heads=4, codebook_size=64, num_classes=10),
    ),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sizes(size: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if size == "paper":
        return dict(registry.get("maskgit").arch), dict(registry.get("enat-l").arch)
    if size not in SIZES:
        raise UserError(f"unknown size {size!r}; choose one of {', '.join([*SIZES, 'paper'])}")
    return SIZES[size]


def run_benchmark(size: str = "small", device: str | torch.device = "cpu", batch_size: int = 8, num_steps: int = 8,
                  cfg: float = 2.5, repeats: int = 1, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Measure the three rows: ``{"meta": {...}, "rows": [{name, params_M, gflops_per_image, images_per_s, …}]}``."""
    device = torch.device(device)
    mg_arch, en_arch = _sizes(size)
    torch.manual_seed(0)
    mg = MaskGITTransformer.from_arch(mg_arch).eval().to(device)
    en = ENAT.from_arch(en_arch).eval().to(device)
    if dtype is not None:
        mg, en = mg.to(dtype), en.to(dtype)
    runs = {
        "maskgit": (mg, MaskGITSampler(num_steps=num_steps, cfg=cfg, cfg_schedule="constant")),
        "enat": (en, ENATSampler(num_steps=num_steps, cfg=cfg, reuse=True)),
        "enat-no-reuse": (en, ENATSampler(num_steps=num_steps, cfg=cfg, reuse=False)),
    }
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rows = []
    for name, (model, sampler) in runs.items():
        def one(b: int) -> torch.Tensor:
            labels = torch.arange(b, device=device) % model.num_classes
            return sampler.sample(model, labels, generator=torch.Generator(device=device).manual_seed(0))

        flops = count_flops(lambda: one(1))  # (also the warm-up on CPU)
        if device.type == "cuda":
            one(batch_size)  # warm-up: kernels, allocator
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            one(batch_size)
        sync()
        secs = (time.perf_counter() - t0) / repeats
        rows.append({"name": name, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                     "flops_per_image": flops, "gflops_per_image": round(flops / 1e9, 2),
                     "images_per_s": round(batch_size / secs, 2)})
    base = rows[0]["flops_per_image"]
    for r in rows:
        r["flops_vs_maskgit"] = round(r["flops_per_image"] / base, 3) if base else None
    meta = {"bench": "enat", "size": size, "device": str(device), "batch_size": batch_size, "num_steps": num_steps,
            "cfg": cfg, "repeats": repeats, "dtype": str(dtype or torch.float32).replace("torch.", ""),
            "tokens": mg.num_tokens, "maskgit_arch": mg_arch, "enat_arch": en_arch, "machine": machine()}
    return {"meta": meta, "rows": rows}


def title(result: dict[str, Any]) -> str:
    m = result["meta"]
    return (f"ENAT vs MaskGIT ({m['size']}, {m['tokens']} tokens, {m['num_steps']} steps, cfg {m['cfg']}, "
            f"{m['device']}, batch {m['batch_size']}, {m['dtype']})")


COLUMNS = ("name", "params_M", "gflops_per_image", "flops_vs_maskgit", "images_per_s")


def write_results(result: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``enat_vs_maskgit.json`` + ``enat_vs_maskgit.md`` in ``out_dir`` (:func:`mgen.bench.report.write_report`)."""
    return write_report(result, out_dir, NAME, title=title(result), columns=COLUMNS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``mgen bench enat``."""
    p.add_argument("--size", choices=["small", "matched", "paper", "tiny"], default="small",
                   help="model pair (see mgen.bench.enat): small = equal width/depth, matched = similar params")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1, help="images per timed decode")
    p.add_argument("--steps", type=int, default=8, help="decoding steps (both models)")
    p.add_argument("--cfg", type=float, default=2.5, help="guidance scale (both models; two branches per step)")
    p.add_argument("--repeats", type=int, default=1, help="timed decodes")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                   help="weights' dtype (bf16/fp16: the sampling arithmetic stays float32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default="bench", help="output folder for enat_vs_maskgit.json / .md")
    p.add_argument("--plot", action="store_true",
                   help="also write enat_vs_maskgit.png: GFLOPs per image vs images/s, one series per model "
                        "(needs matplotlib: pip install 'mgen[plot]')")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """ENAT vs MaskGIT: FLOPs per image and images/s over a full decode; writes the report, returns the result."""
    if args.threads:
        torch.set_num_threads(int(args.threads))
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    if args.batch_size < 1 or args.steps < 1 or args.repeats < 1:
        raise UserError("--batch-size, --steps and --repeats must be positive")
    dtype = DTYPES[getattr(args, "dtype", None) or "fp32"]
    res = run_benchmark(args.size, args.device, args.batch_size, args.steps, args.cfg, args.repeats,
                        None if dtype == torch.float32 else dtype)
    j, m = write_results(res, args.out)
    res["written"] = [str(j), str(m)]
    if getattr(args, "plot", False):
        res["written"].append(str(chart(res, j.with_suffix(".png"))))
    return res


def chart(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """GFLOPs per image vs images/s of an ENAT-vs-MaskGIT result as a PNG, one series per model (``maskgit``,
    ``enat``, ``enat-no-reuse``), each point labelled with its parameter count. The benchmark runs random weights,
    so its "quality" axis is the compute it reports (lower is better); a result without those rows is one
    UserError."""
    rows = [r for r in result.get("rows", []) if all(r.get(k) is not None for k in ("name", "images_per_s", "gflops_per_image"))]
    if not rows:
        raise UserError("this ENAT result has no rows with name, images_per_s and gflops_per_image to chart")
    series: dict[str, list[ChartPoint]] = {}
    for r in rows:
        label = f"{r['params_M']:g}M params" if r.get("params_M") is not None else None
        series.setdefault(str(r["name"]), []).append(
            ChartPoint(float(r["images_per_s"]), float(r["gflops_per_image"]), label=label))
    m = result.get("meta", {})
    title = (f"ENAT vs MaskGIT ({m.get('size', '?')}, {m.get('num_steps', '?')} steps, cfg {m.get('cfg', '?')}, "
             f"{m.get('device', '?')}, batch {m.get('batch_size', '?')}, {str(m.get('dtype', '?')).replace('torch.', '')})")
    return write_chart(series, path, "images / s", "generator GFLOPs per image (lower is better)", title=title,
                       connect=False)
