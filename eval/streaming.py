"""Evaluate straight from a sampler: samples → feature extractors → feature shards on disk, resumable, sharded.

No PNG is written: each batch of samples goes from ``sample_fn`` to the feature extractors in memory,
using the same uint8 quantisation as the PNG writer (so the features equal those of the saved images).

Plan (:func:`sample_plan`): sample ``i`` of ``N`` has class ``⌊i·C / N⌋`` (for ``N`` divisible by ``C``
this is MAR's ``arange(C).repeat(N // C)``, LTH14/mar ``engine_mar.evaluate``) and seed
``(seed << 32) + i``. Work is cut into shards of ``shard_size`` consecutive samples; shard ``k`` is done
by process ``k mod world_size`` (``accelerate launch`` sets the ranks) and written atomically to
``work_dir/shard-<k>.safetensors`` as soon as it is finished. A run that is killed and started again with
the same settings (checked against ``work_dir/meta.json``) skips the shards already on disk, so it ends
with exactly the features an uninterrupted run gives. Process 0 waits for all and gathers the shards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from mgen.errors import UserError

SampleFn = Callable[[torch.Tensor, list[int]], torch.Tensor]
ExtractFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]
META_NAME = "meta.json"


def sample_plan(num_samples: int, num_classes: int | None, seed: int) -> tuple[torch.Tensor | None, list[int]]:
    """``(labels, seeds)`` of all samples (labels None for an unconditional model)."""
    if num_samples < 1:
        raise UserError(f"the number of samples must be positive, got {num_samples}")
    if not 0 <= seed < 2**31:
        raise UserError(f"seed must be in [0, 2^31), got {seed}")
    labels = None
    if num_classes:
        labels = torch.arange(num_samples, dtype=torch.long) * num_classes // num_samples
    return labels, [(seed << 32) + i for i in range(num_samples)]


def _shard_path(work_dir: Path, k: int) -> Path:
    return work_dir / f"shard-{k:06d}.safetensors"


def _write_json_atomic(path: Path, obj: Any) -> None:
    from mgen.fileio import atomic_write

    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def _check_meta(work_dir: Path, meta: dict[str, Any], is_main: bool) -> None:
    path = work_dir / META_NAME
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if diff:
            raise UserError(f"{work_dir} holds features of another run (different {', '.join(diff)}): "
                            "use another --work-dir or delete it")
    elif is_main:
        _write_json_atomic(path, meta)


def _load_shard(path: Path, lo: int, hi: int) -> dict[str, torch.Tensor] | None:
    """A finished shard's tensors, or None when it is missing or not what it should be."""
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        t = load_file(str(path))
    except Exception:  # safetensors raises its own SafetensorError (a truncated/garbage file): redo the shard
        return None
    idx = t.get("index")
    if idx is None or not torch.equal(idx, torch.arange(lo, hi)):
        return None
    return t


def stream_features(sample_fn: SampleFn, extract_fn: ExtractFn, num_samples: int, work_dir: str | os.PathLike,
                    *, num_classes: int | None = None, seed: int = 0, batch_size: int = 32,
                    shard_size: int | None = None, meta: dict[str, Any] | None = None, progress: bool = True,
                    rank: int | None = None, world_size: int | None = None,
                    barrier: Callable[[], None] | None = None) -> dict[str, torch.Tensor] | None:
    """Sample ``num_samples`` images and return their features (on process 0; None on the others).

    ``sample_fn(labels, seeds) -> images`` in [-1, 1] (labels is None-free: unconditional models get
    zeros); ``extract_fn(images) -> {name: B×D}``. The returned dict also holds ``"index"`` and ``"label"``.
    Without ``rank``/``world_size``, they come from ``accelerate.PartialState`` (1 process if not launched).
    """
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    shard_size = shard_size or batch_size * 8
    if shard_size < 1:
        raise UserError(f"shard size must be positive, got {shard_size}")
    labels, seeds = sample_plan(num_samples, num_classes, seed)
    if rank is None or world_size is None:
        rank, world_size, barrier = _accelerate_state()
    barrier = barrier or (lambda: None)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    run_meta = {"num_samples": num_samples, "num_classes": num_classes, "seed": seed, "shard_size": shard_size,
                "batch_size": batch_size, **(meta or {})}
    _check_meta(work, run_meta, rank == 0)
    num_shards = (num_samples + shard_size - 1) // shard_size
    mine = [k for k in range(num_shards) if k % world_size == rank]
    todo = [k for k in mine if _load_shard(_shard_path(work, k), k * shard_size,
                                           min(num_samples, (k + 1) * shard_size)) is None]
    from tqdm import tqdm

    from mgen.hub import save_safetensors

    done_before = sum(min(num_samples, (k + 1) * shard_size) - k * shard_size for k in mine if k not in todo)
    total = sum(min(num_samples, (k + 1) * shard_size) - k * shard_size for k in mine)
    with tqdm(total=total, initial=done_before, unit="img", desc=f"sampling [{rank}/{world_size}]",
              disable=not progress) as bar:
        for k in todo:
            lo, hi = k * shard_size, min(num_samples, (k + 1) * shard_size)
            parts: dict[str, list[torch.Tensor]] = {}
            for b in range(lo, hi, batch_size):
                e = min(hi, b + batch_size)
                lab = labels[b:e] if labels is not None else torch.zeros(e - b, dtype=torch.long)
                images = sample_fn(lab, seeds[b:e])
                if not torch.is_tensor(images) or images.dim() != 4 or images.shape[0] != e - b:
                    raise UserError(f"the sampler returned {getattr(images, 'shape', type(images))} "
                                    f"for a batch of {e - b}")
                for name, v in extract_fn(images).items():
                    parts.setdefault(name, []).append(v.detach().float().cpu())
                bar.update(e - b)
            shard = {n: torch.cat(v).contiguous() for n, v in parts.items()}
            shard["index"] = torch.arange(lo, hi)
            shard["label"] = (labels[lo:hi] if labels is not None else torch.zeros(hi - lo, dtype=torch.long)).clone()
            save_safetensors(shard, _shard_path(work, k))
    barrier()
    if rank != 0:
        return None
    return gather_shards(work, num_samples, shard_size)


def gather_shards(work_dir: str | os.PathLike, num_samples: int, shard_size: int) -> dict[str, torch.Tensor]:
    """Concatenate all shards of a finished run in sample order."""
    work = Path(work_dir)
    out: dict[str, list[torch.Tensor]] = {}
    for k in range((num_samples + shard_size - 1) // shard_size):
        lo, hi = k * shard_size, min(num_samples, (k + 1) * shard_size)
        t = _load_shard(_shard_path(work, k), lo, hi)
        if t is None:
            raise UserError(f"shard {k} of {work} is missing or damaged (samples {lo}…{hi - 1}): run again to redo it")
        for n, v in t.items():
            out.setdefault(n, []).append(v)
    return {n: torch.cat(v) for n, v in out.items()}


def _accelerate_state() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) of an ``accelerate launch`` / torchrun run; (0, 1, no-op) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state.wait_for_everyone


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → uint8 ``B×3×H×W`` on the same device, rounding exactly as ``mgen.images.to_uint8`` (PNG writer)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def pipeline_sample_fn(pipe: Any, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                       device: str | torch.device = "cpu", **call_kwargs: Any) -> SampleFn:
    """Adapt a diffusers-style mgen pipeline to ``sample_fn(labels, seeds) -> images in [-1, 1]``.

    mgen pipelines take one ``torch.Generator`` per call and derive one stream per sample index from it
    (``mgen.samplers.per_sample_generators``), so each batch is seeded with its first sample's seed:
    the samples are a deterministic function of (seed, sample index, batch size); the batch size is part
    of the work dir's settings, so a resumed run draws exactly the same samples.
    """

    def sample(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        g = torch.Generator(device=device).manual_seed(seeds[0])
        kwargs = dict(call_kwargs)
        if num_inference_steps is not None:
            kwargs["num_inference_steps"] = num_inference_steps
        if guidance_scale is not None:
            kwargs["guidance_scale"] = guidance_scale
        out = pipe(class_labels=labels.to(device), generator=g, output_type="pt", **kwargs)
        images = out.images if hasattr(out, "images") else out[0]
        if not torch.is_tensor(images):
            images = torch.as_tensor(images)
        if images.dim() == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
            images = images.permute(0, 3, 1, 2)
        return images.float() * 2 - 1  # diffusers' "pt" output is in [0, 1]

    return sample
