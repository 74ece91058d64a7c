"""Evaluate straight from a sampler: samples → feature extractors → feature shards on disk, resumable, sharded.

No PNG is written: each batch of samples goes from ``sample_fn`` to the feature extractors in memory, quantised
to uint8 exactly as the PNG writer stores it (so the features equal those of the saved images).

Plan (:func:`sample_plan`): sample ``i`` of ``N`` has class ``⌊i·C / N⌋`` (for ``N`` divisible by ``C`` this is
MAR's ``arange(C).repeat(N // C)``, LTH14/mar ``engine_mar.evaluate``) and its own random stream, seeded
:func:`sample_seed` ``(seed, i) = splitmix64(seed) + i·0x9E3779B97F4A7C15 mod 2^64``. (Not ``(seed << 32) + i``:
torch's CPU generator keeps only the low 32 bits of a seed, which would make ``--seed`` change nothing. Here the
low 32 bits are distinct for every ``i < 2^32`` (an odd multiplier) and depend on ``seed`` through splitmix64;
CUDA's Philox generator uses all 64 bits.)

Batch invariance: sample ``i`` depends only on its own stream, and the feature extractors always see the same
blocks of :data:`FEATURE_BLOCK` consecutive samples (``[16j, 16j + 16)``, whatever the sampling batch, the shard
size or the process that drew them), so the features — hence the metrics — are the same for every
``batch_size`` and every split over processes, on the same device and thread count (the samplers' own float
rounding across batch sizes, a few 1e-7, is below the uint8 quantisation except in rare pixels; README).

Shards: work is cut into shards of ``shard_size`` consecutive samples (a multiple of :data:`FEATURE_BLOCK`);
shard ``k`` is done by process ``k mod world_size`` (``accelerate launch`` / ``torchrun`` set the ranks) and
written atomically to ``work_dir/shard-<k>.safetensors`` as soon as it is finished. Without an explicit
``shard_size``, process 0 times the first batch and sizes the shards so that one takes about
:data:`SHARD_SECONDS` (a kill loses at most about a minute of one process's work); the size is recorded in
``work_dir/meta.json`` and reused by every process and by a resumed run. A run that is killed and started again
with the same settings (checked against ``meta.json``) skips the shards already on disk, so it ends with
exactly the features an uninterrupted run gives. Process 0 waits for all and gathers the shards.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mgen.errors import UserError
from mgen.eval.outputs import make_dir, write_json, write_safetensors
from mgen.fileio import clean_stale_temps

SampleFn = Callable[[torch.Tensor, list[int]], torch.Tensor]
ExtractFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]
META_NAME = "meta.json"
#: samples per call of the feature extractors, aligned to sample indices (what makes features batch-invariant)
FEATURE_BLOCK = 16
#: target duration of one shard when its size is chosen from the first batch's timing
SHARD_SECONDS = 60.0
#: largest automatic shard (samples)
MAX_AUTO_SHARD = 1024


def sample_plan(num_samples: int, num_classes: int | None, seed: int) -> tuple[torch.Tensor | None, list[int]]:
    """``(labels, seeds)`` of all samples (labels None for an unconditional model)."""
    if num_samples < 1:
        raise UserError(f"the number of samples must be positive, got {num_samples}")
    if not 0 <= seed < 2**31:
        raise UserError(f"seed must be in [0, 2^31), got {seed}")
    labels = None
    if num_classes:
        labels = torch.arange(num_samples, dtype=torch.long) * num_classes // num_samples
    return labels, [sample_seed(seed, i) for i in range(num_samples)]


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, splitmix64's increment


def _splitmix64(x: int) -> int:
    """splitmix64's output function (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators";
    constants of Vigna's reference splitmix64.c)."""
    z = (x + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample_seed(seed: int, i: int) -> int:
    """The 64-bit ``torch.Generator`` seed of sample ``i`` of a run with ``seed`` (module docstring)."""
    return (_splitmix64(seed) + i * _GOLDEN) & _MASK64


def auto_shard_size(seconds_per_sample: float, block: int = FEATURE_BLOCK, target: float = SHARD_SECONDS,
                    largest: int = MAX_AUTO_SHARD) -> int:
    """Samples per shard so that a shard takes about ``target`` seconds: a multiple of ``block`` in
    ``[block, largest]``."""
    if not seconds_per_sample > 0:
        return largest // block * block
    n = int(target / seconds_per_sample) // block * block
    return max(block, min(largest // block * block, n))


def _shard_path(work_dir: Path, k: int) -> Path:
    return work_dir / f"shard-{k:06d}.safetensors"


def _read_meta(work_dir: Path) -> dict[str, Any] | None:
    path = work_dir / META_NAME
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(old, dict):
        raise UserError(f"{path} is not an mgen eval settings file (use another --work-dir or delete it)")
    return old


def _check_meta(work_dir: Path, old: dict[str, Any] | None, meta: dict[str, Any]) -> None:
    if old is None:
        return
    diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
    if diff:
        raise UserError(f"{work_dir} holds features of another run (different {', '.join(diff)}): "
                        "use another --work-dir or delete it")


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


class _Sampler:
    """Draws samples ``[lo, hi)`` as uint8 in batches of ``batch_size`` (a cached first batch is used once)."""

    def __init__(self, sample_fn: SampleFn, labels: torch.Tensor | None, seeds: list[int], batch_size: int) -> None:
        self.sample_fn, self.labels, self.seeds, self.batch_size = sample_fn, labels, seeds, batch_size
        self.cache: dict[int, torch.Tensor] = {}

    def draw(self, lo: int, hi: int) -> torch.Tensor:
        lab = self.labels[lo:hi] if self.labels is not None else torch.zeros(hi - lo, dtype=torch.long)
        images = self.sample_fn(lab, self.seeds[lo:hi])
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[0] != hi - lo:
            raise UserError(f"the sampler returned {getattr(images, 'shape', type(images))} for a batch of {hi - lo}")
        if not bool(torch.isfinite(images).all()):
            raise UserError(f"the sampler returned NaN or infinite values (samples {lo}…{hi - 1}): check the weights "
                            "and the sampling settings")
        return images_to_uint8(images)

    def batches(self, lo: int, hi: int):
        """Yield uint8 ``B×3×H×W`` batches covering ``[lo, hi)`` in order."""
        i = lo
        while i < hi:
            if i in self.cache:
                u = self.cache.pop(i)
                if u.shape[0] > hi - i:  # a cached batch longer than this shard: keep the rest for later
                    self.cache[hi] = u[hi - i:]
                    u = u[:hi - i]
                yield u
                i += u.shape[0]
                continue
            e = min(hi, i + self.batch_size, min((k for k in self.cache if k > i), default=hi))
            yield self.draw(i, e)
            i = e


def _extract_block(extract_fn: ExtractFn, u8: torch.Tensor) -> dict[str, torch.Tensor]:
    # the extractors get the images as a PNG reader would: uint8 levels as floats in [-1, 1]
    out = extract_fn(u8.float() / 127.5 - 1.0)
    return {n: v.detach().float().cpu() for n, v in out.items()}


def stream_features(sample_fn: SampleFn, extract_fn: ExtractFn, num_samples: int, work_dir: str | os.PathLike,
                    *, num_classes: int | None = None, seed: int = 0, batch_size: int = 32,
                    shard_size: int | None = None, meta: dict[str, Any] | None = None, progress: bool = True,
                    rank: int | None = None, world_size: int | None = None,
                    barrier: Callable[[], None] | None = None, block: int = FEATURE_BLOCK,
                    shard_seconds: float = SHARD_SECONDS,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, torch.Tensor] | None:
    """Sample ``num_samples`` images and return their features (on process 0; None on the others).

    ``sample_fn(labels, seeds) -> images`` in [-1, 1] (unconditional models get zero labels);
    ``extract_fn(images) -> {name: B×D}`` is called on blocks of ``block`` consecutive samples (aligned to the
    sample index), with the images quantised to uint8 levels. The returned dict also holds ``"index"`` and
    ``"label"``. ``shard_size`` (a multiple of ``block``): default from the timing of the first batch (module
    docstring). Without ``rank``/``world_size``, they come from ``accelerate.PartialState`` (1 process if not
    launched).
    """
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    if block < 1:
        raise UserError(f"feature block must be positive, got {block}")
    if shard_size is not None and (shard_size < 1 or shard_size % block):
        raise UserError(f"shard size must be a positive multiple of {block}, got {shard_size}")
    labels, seeds = sample_plan(num_samples, num_classes, seed)
    if rank is None or world_size is None:
        rank, world_size, barrier = _accelerate_state()
    barrier = barrier or (lambda: None)
    work = make_dir(work_dir)
    run_meta = {"num_samples": num_samples, "num_classes": num_classes, "seed": seed, "feature_block": block,
                **(meta or {})}
    sampler = _Sampler(sample_fn, labels, seeds, batch_size)
    old = _read_meta(work)
    if old is not None:
        _check_meta(work, {k: v for k, v in old.items() if k != "shard_size"}, run_meta)
        if shard_size is not None and old.get("shard_size") != shard_size:
            raise UserError(f"{work} holds features of another run (different shard_size: {old.get('shard_size')}): "
                            "use another --work-dir or delete it")
    if rank == 0:
        clean_stale_temps(work)  # .tmp-* shards of a killed run
        if old is None:
            if shard_size is None:
                # time the first batch (kept: it is the start of shard 0, which is process 0's)
                n0 = min(batch_size, num_samples)
                t0 = clock()
                first = sampler.draw(0, n0)
                t1 = clock()
                _extract_block(extract_fn, first[:block])
                t2 = clock()
                sampler.cache[0] = first
                shard_size = auto_shard_size((t1 - t0) / n0 + (t2 - t1) / min(block, n0), block, shard_seconds)
            write_json(work / META_NAME, {**run_meta, "shard_size": shard_size}, sort_keys=True)
        elif shard_size is None:
            if not isinstance(old.get("shard_size"), int):
                raise UserError(f"{work / META_NAME} has no shard size: use another --work-dir or delete it")
            shard_size = old["shard_size"]
    barrier()
    if shard_size is None:  # the other processes take process 0's choice
        written = _read_meta(work)
        if written is None or not isinstance(written.get("shard_size"), int):
            raise UserError(f"{work / META_NAME} is missing: process 0 did not start this run")
        shard_size = written["shard_size"]
    if shard_size < 1 or shard_size % block:
        raise UserError(f"{work / META_NAME}: shard size {shard_size} is not a positive multiple of {block}")
    num_shards = (num_samples + shard_size - 1) // shard_size
    span = lambda k: (k * shard_size, min(num_samples, (k + 1) * shard_size))  # noqa: E731
    mine = [k for k in range(num_shards) if k % world_size == rank]
    todo = [k for k in mine if _load_shard(_shard_path(work, k), *span(k)) is None]
    if 0 not in todo:
        sampler.cache.clear()
    from tqdm import tqdm

    total = sum(span(k)[1] - span(k)[0] for k in mine)
    done_before = total - sum(span(k)[1] - span(k)[0] for k in todo)
    with tqdm(total=total, initial=done_before, unit="img", desc=f"sampling [{rank}/{world_size}]",
              disable=not progress) as bar:
        for k in todo:
            lo, hi = span(k)
            parts: dict[str, list[torch.Tensor]] = {}
            pending: list[torch.Tensor] = []
            have, start = 0, lo
            for u in sampler.batches(lo, hi):
                pending.append(u)
                have += u.shape[0]
                bar.update(u.shape[0])
                while have >= block or (have and start + have == hi):
                    buf = torch.cat(pending) if len(pending) > 1 else pending[0]
                    n = min(block, have)
                    for name, v in _extract_block(extract_fn, buf[:n]).items():
                        parts.setdefault(name, []).append(v)
                    pending, have, start = ([buf[n:]] if have > n else []), have - n, start + n
            shard = {n: torch.cat(v).contiguous() for n, v in parts.items()}
            shard["index"] = torch.arange(lo, hi)
            shard["label"] = (labels[lo:hi] if labels is not None else torch.zeros(hi - lo, dtype=torch.long)).clone()
            write_safetensors(_shard_path(work, k), shard)
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


def distributed_cpu(device: str | torch.device | None = None) -> bool:
    """Whether a multi-process run must use CPU processes (gloo): ``--device cpu``, or no CUDA on this machine."""
    if device is not None and torch.device(device).type == "cpu":
        return True
    return not torch.cuda.is_available()


def _accelerate_state(device: str | torch.device | None = None) -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) of an ``accelerate launch`` / torchrun run; (0, 1, no-op) otherwise.

    ``PartialState(cpu=True)`` on a CPU run: without it accelerate reports no distribution on a machine without
    GPUs (every process would draw every sample) — with it, gloo process groups as on GPUs with NCCL.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState(cpu=distributed_cpu(device))
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise UserError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but accelerate sees {state.num_processes} "
                        "process(es): launch with accelerate launch --num_processes N or torchrun --nproc-per-node N")
    return state.process_index, state.num_processes, state.wait_for_everyone


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → uint8 ``B×3×H×W`` on the same device, rounding exactly as ``mgen.images.to_uint8`` (PNG writer)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def pipeline_sample_fn(pipe: Any, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                       device: str | torch.device = "cpu", **call_kwargs: Any) -> SampleFn:
    """Adapt a diffusers-style mgen pipeline to ``sample_fn(labels, seeds) -> images in [-1, 1]``.

    Sample ``i`` gets its own ``torch.Generator`` seeded with ``seeds[i]`` (:func:`sample_seed`), handed to the
    pipeline as a list (diffusers' convention, :func:`mgen.samplers.per_sample_generators` uses such a list as
    is), so every random draw of sample ``i`` comes from its own stream: the samples, hence the metrics, do not
    depend on the batch size or on how the samples are split over processes.
    """

    def sample(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        kwargs = dict(call_kwargs)
        if num_inference_steps is not None:
            kwargs["num_inference_steps"] = num_inference_steps
        if guidance_scale is not None:
            kwargs["guidance_scale"] = guidance_scale
        out = pipe(class_labels=labels.to(device), generator=gens, output_type="pt", **kwargs)
        images = out.images if hasattr(out, "images") else out[0]
        if not torch.is_tensor(images):
            images = torch.as_tensor(images)
        if images.dim() == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
            images = images.permute(0, 3, 1, 2)
        return images.float() * 2 - 1  # diffusers' "pt" output is in [0, 1]

    return sample
