"""ENAT vs MaskGIT: generator FLOPs per image and images/s for a full decode (ENAT paper, Ni et al. 2024,
Tables 1–2: "a large compute reduction at equal quality").

Both generators run on the same token grid (16×16 codes from a 1024-entry VQGAN, as on ImageNet 256),
the same number of decoding steps (8) and classifier-free guidance (two branches per step), with random
weights (FLOPs and speed do not depend on the values). Rows:

* ``maskgit``: :class:`mgen.models.maskgit.MaskGITTransformer` + :class:`~mgen.samplers.maskgit.MaskGITSampler`;
* ``enat``: :class:`mgen.models.enat.ENAT` + :class:`~mgen.samplers.enat.ENATSampler` with feature reuse;
* ``enat-no-reuse``: the same ENAT recomputing every visible token at every step (spatial
  disentanglement only), to separate the two savings.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` over one whole decode of one
image (the attention runs through the ``math`` backend during counting so that its matmuls are seen;
a multiply-add counts as 2 FLOPs). images/s is wall-clock for a batch after one warm-up decode.

Sizes: ``small`` pairs a MaskGIT of width 512 and 12 blocks with an ENAT of width 512 and 10 + 2 blocks
(equal width and depth; ENAT's 8-vector adaLN and two-way keys/values make it ~1.9x the parameters);
``matched`` pairs that ENAT with a MaskGIT of similar parameter count (768 wide, 12 blocks); ``paper`` pairs the registry's ``maskgit`` (768 wide, 24 blocks) with
``enat-l`` (1024 wide, 22 + 2 blocks).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

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


def _paper_sizes() -> tuple[dict[str, Any], dict[str, Any]]:
    from mgen import registry

    mg = {k: v for k, v in registry.get("maskgit").arch.items()}
    en = {k: v for k, v in registry.get("enat-l").arch.items()}
    return mg, en


def count_flops(fn) -> int:
    """Total FLOPs of ``fn()`` (matmul-type ops; attention through the math backend)."""
    from torch.utils.flop_counter import FlopCounterMode

    old = os.environ.get("MGEN_ATTN")
    os.environ["MGEN_ATTN"] = "math"
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        if old is None:
            os.environ.pop("MGEN_ATTN", None)
        else:
            os.environ["MGEN_ATTN"] = old
    return int(counter.get_total_flops())


def run_benchmark(size: str = "small", device: str | torch.device = "cpu", batch_size: int = 8, num_steps: int = 8,
                  cfg: float = 2.5, repeats: int = 1, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Measure the three rows; returns ``{"config": …, "rows": [{name, params_M, gflops_per_image, images_per_s}]}``."""
    from mgen.models.enat import ENAT
    from mgen.models.maskgit import MaskGITTransformer
    from mgen.samplers.enat import ENATSampler
    from mgen.samplers.maskgit import MaskGITSampler

    device = torch.device(device)
    mg_arch, en_arch = _paper_sizes() if size == "paper" else SIZES[size]
    torch.manual_seed(0)
    mg = MaskGITTransformer(mg_arch).eval().to(device)
    en = ENAT(en_arch).eval().to(device)
    if dtype is not None:
        mg, en = mg.to(dtype), en.to(dtype)
    runs = {
        "maskgit": (mg, MaskGITSampler(num_steps=num_steps, cfg=cfg, cfg_schedule="constant")),
        "enat": (en, ENATSampler(num_steps=num_steps, cfg=cfg, reuse=True)),
        "enat-no-reuse": (en, ENATSampler(num_steps=num_steps, cfg=cfg, reuse=False)),
    }
    rows = []
    for name, (model, sampler) in runs.items():
        def one(b: int) -> torch.Tensor:
            labels = torch.arange(b, device=device) % model.num_classes
            return sampler.sample(model, labels, generator=torch.Generator().manual_seed(0))

        flops = count_flops(lambda: one(1))  # (also the warm-up on CPU)
        if device.type == "cuda":
            one(batch_size)  # warm-up: kernels, allocator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            one(batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        secs = (time.perf_counter() - t0) / repeats
        rows.append({"name": name, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                     "flops_per_image": flops, "gflops_per_image": round(flops / 1e9, 2), "images_per_s": round(batch_size / secs, 2)})
    base = rows[0]["flops_per_image"]
    for r in rows:
        r["flops_vs_maskgit"] = round(r["flops_per_image"] / base, 3) if base else None
    return {"config": {"size": size, "device": str(device), "batch_size": batch_size, "num_steps": num_steps, "cfg": cfg,
                       "repeats": repeats, "dtype": str(dtype or torch.float32), "tokens": mg.num_tokens,
                       "maskgit_arch": mg_arch, "enat_arch": en_arch,
                       "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
            "rows": rows}


def markdown_table(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [f"ENAT vs MaskGIT ({c['size']}, {c['tokens']} tokens, {c['num_steps']} steps, cfg {c['cfg']}, "
             f"{c['device']}{' ' + c['gpu'] if c.get('gpu') else ''}, batch {c['batch_size']}, {c['dtype']})", "",
             "| generator | params (M) | GFLOPs / image | × MaskGIT | images / s |", "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['params_M']} | {r['gflops_per_image']} | {r['flops_vs_maskgit']} | {r['images_per_s']} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``enat_vs_maskgit.json`` + ``enat_vs_maskgit.md`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "enat_vs_maskgit.json", out / "enat_vs_maskgit.md"
    for path, text in ((j, json.dumps(result, indent=2) + "\n"), (m, markdown_table(result))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return j, m


if __name__ == "__main__":  # python -m mgen.models.enat_benchmark [size] [device] [batch]
    import sys

    size = sys.argv[1] if len(sys.argv) > 1 else "small"
    dev = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    bs = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    res = run_benchmark(size, dev, bs)
    print(markdown_table(res))
    write_results(res, Path(os.environ.get("OUT", "runs/bench")))


def add_cli_arguments(p: Any) -> None:
    """Options of ``mgen bench enat``."""
    p.add_argument("--size", choices=["small", "matched", "paper", "tiny"], default="small",
                   help="model pair (see mgen.models.enat_benchmark): small = equal width/depth, matched = similar params")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1, help="images per timed decode")
    p.add_argument("--steps", type=int, default=8, help="decoding steps (both models)")
    p.add_argument("--cfg", type=float, default=2.5, help="guidance scale (both models; two branches per step)")
    p.add_argument("--repeats", type=int, default=1, help="timed decodes")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default="bench", help="output folder for enat.json / enat.md")


def run_cli(args: Any) -> dict[str, Any]:
    """ENAT vs MaskGIT: FLOPs per image and images/s over a full decode (flat record for ``mgen bench``)."""
    from mgen.errors import UserError

    if args.threads:
        torch.set_num_threads(int(args.threads))
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    if args.batch_size < 1 or args.steps < 1 or args.repeats < 1:
        raise UserError("--batch-size, --steps and --repeats must be positive")
    res = run_benchmark(args.size, args.device, args.batch_size, args.steps, args.cfg, args.repeats)
    flat: dict[str, Any] = {k: v for k, v in res["config"].items() if not k.endswith("_arch")}
    for r in res["rows"]:
        key = r["name"].replace("-", "_")
        flat[f"{key}_params_M"] = r["params_M"]
        flat[f"{key}_gflops_per_image"] = r["gflops_per_image"]
        flat[f"{key}_flops_vs_maskgit"] = r["flops_vs_maskgit"]
        flat[f"{key}_images_per_s"] = r["images_per_s"]
    return flat
