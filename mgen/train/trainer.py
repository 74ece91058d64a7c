"""The one training loop every mgen model plugs into (docs/ARCHITECTURE.md, "Training").

A model contributes a :class:`TrainTask`: its network, its loss on a batch, and optionally a sample-grid
hook. The loop owns everything else: AdamW, warm-up then constant or cosine learning rate (transformers'
schedulers, :mod:`mgen.train.schedule`), EMA (torch's ``AveragedModel``, :mod:`mgen.train.ema`), mixed
precision and several processes through ``accelerate``, gradient clipping, crash-safe checkpoints with exact
resume (:mod:`mgen.train.checkpoint`), tqdm progress, a JSON-lines log, a loss/lr curve and periodic sample grids.

Several processes (``accelerate launch --num_processes N -m mgen train …``, or torchrun): the config's batch
size is the *global* batch (items per optimizer step over all processes) whatever N is. Each optimizer step's
global batch is cut into ``N × A`` chunks whose sizes differ by at most one item (``A`` micro-steps of gradient
accumulation, 1 unless ``micro_batch_size`` caps the items per forward pass); process ``r`` takes chunks
``r·A … r·A + A − 1``. Each chunk's loss is weighted by ``n_chunk · N / global`` before the backward pass, so that
the gradient accelerate/DDP averages over processes equals the gradient of the mean loss over the global batch
also when the batch does not divide (64 items on 3 processes: chunks of 22, 21 and 21). On one process with
``A = 1`` the weight is exactly 1 and nothing changes.

Mixed precision: ``mixed_precision: auto`` (the default) takes accelerate's setting when one is given
(``accelerate launch --mixed_precision bf16`` sets ``ACCELERATE_MIXED_PRECISION``), else bf16 on a GPU that has it
and full precision on CPU; an explicit ``no``/``bf16``/``fp16`` in the config wins over accelerate's.

Exact resume: data order and the loss' randomness are functions of (seed, step, chunk) only; the model, EMA,
optimizer, scheduler, step and every process's RNG states (python, numpy, torch, CUDA) are checkpointed through
accelerate's ``save_state`` / ``load_state`` (+ ``register_for_checkpointing`` for the trainer's progress).
Stopping after k steps (or being killed at any point, also inside a save) and resuming gives bit-identical
weights to an uninterrupted run on the same machine and process count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

import mgen.train.checkpoint as ckpt
import mgen.train.plot as curves
from mgen.errors import UserError
from mgen.fileio import clean_stale_temps
from mgen.train.ema import EMA
from mgen.train.schedule import SCHEDULES, build_lr_scheduler

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
_SEED_MOD = 2**63 - 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class TrainConfig:
    """Optimisation settings; read from the ``train:`` section of a model's YAML. Checked on construction."""

    out_dir: str = "runs/train"
    max_steps: int | None = None
    epochs: float | None = None  # alternative to max_steps
    batch_size: int | None = None  # the global batch: items per optimizer step over all processes
    global_batch_size: int | None = None  # the same (older name); give one of the two
    micro_batch_size: int | None = None  # at most this many items per process and forward pass (grad accumulation)
    lr: float = 1e-4
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.02
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    lr_schedule: str = "constant"  # or "cosine"
    ema_decay: float = 0.0  # 0 disables EMA
    grad_clip: float = 0.0  # 0 disables clipping
    mixed_precision: str = "auto"  # "auto" (accelerate's setting, else bf16 on GPU, none on CPU), "no", "bf16", "fp16"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_every: int = 0  # also keep checkpoint-N for every N divisible by this (learning curves); 0 = newest only
    sample_every: int = 0
    log_every: int = 10
    seed: int = 0
    progress: bool = True
    plot: bool | None = None  # RUN/curves.png: None = when matplotlib is installed, True = required, False = never

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        def bad(name: str, want: str) -> UserError:
            return UserError(f"training setting {name} must be {want}, got {getattr(self, name)!r}")

        def integer(name: str, low: int, optional: bool = False, high: int | None = None) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if not _is_int(v) or v < low or (high is not None and v > high):
                raise bad(name, f"an integer >= {low}" + (f" and <= {high}" if high is not None else ""))

        def real(name: str, low: float, high: float | None = None, optional: bool = False, open_low: bool = False,
                 open_high: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            ok = _is_real(v) and math.isfinite(v) and (v > low if open_low else v >= low)
            if ok and high is not None:
                ok = v < high if open_high else v <= high
            if not ok:
                lo = f"{'>' if open_low else '>='} {low}"
                hi = "" if high is None else f" and {'<' if open_high else '<='} {high}"
                raise bad(name, f"a finite number {lo}{hi}")
            setattr(self, name, float(v))

        if not isinstance(self.out_dir, (str, os.PathLike)) or not str(self.out_dir):
            raise bad("out_dir", "a folder path")
        self.out_dir = str(self.out_dir)
        integer("max_steps", 1, optional=True)
        real("epochs", 0.0, optional=True, open_low=True)
        integer("batch_size", 1, optional=True)
        integer("global_batch_size", 1, optional=True)
        integer("micro_batch_size", 1, optional=True)
        if self.batch_size is not None and self.global_batch_size is not None and self.batch_size != self.global_batch_size:
            raise UserError(f"training settings batch_size ({self.batch_size}) and global_batch_size "
                            f"({self.global_batch_size}) disagree: both name the global batch, give one")
        real("lr", 0.0, 1.0, open_low=True)
        real("min_lr", 0.0, self.lr)
        try:
            betas = tuple(self.betas)
        except TypeError:
            raise bad("betas", "two numbers in [0, 1)") from None
        if len(betas) != 2 or not all(_is_real(b) and math.isfinite(b) and 0.0 <= b < 1.0 for b in betas):
            raise bad("betas", "two numbers in [0, 1)")
        self.betas = (float(betas[0]), float(betas[1]))
        real("weight_decay", 0.0)
        integer("warmup_steps", 0, optional=True)
        real("warmup_epochs", 0.0, optional=True)
        if self.lr_schedule not in SCHEDULES:
            raise bad("lr_schedule", " or ".join(SCHEDULES))
        real("ema_decay", 0.0, 1.0, open_high=True)
        real("grad_clip", 0.0)
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", "one of " + ", ".join(MIXED_PRECISION))
        for name in ("gradient_checkpointing", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if self.plot is not None and not isinstance(self.plot, bool):
            raise bad("plot", "true, false or unset")
        integer("checkpoint_every", 1)
        integer("keep_every", 0)
        integer("sample_every", 0)
        integer("log_every", 1)
        integer("seed", 0, high=2**63 - 1)

    @property
    def global_batch(self) -> int | None:
        """The global batch (``batch_size`` or its older name ``global_batch_size``)."""
        return self.batch_size if self.batch_size is not None else self.global_batch_size

    @classmethod
    def from_mapping(cls, data: dict[str, Any], **overrides: Any) -> "TrainConfig":
        """The config of a YAML ``train:`` mapping; ``overrides`` that are not None win (``batch_size`` over
        either batch key of ``data``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in overrides.items() if v is not None}
        data = dict(data)
        if "batch_size" in given or "global_batch_size" in given:
            data.pop("batch_size", None)
            data.pop("global_batch_size", None)
        merged = {**data, **given}
        unknown = set(merged) - known
        if unknown:
            raise UserError(f"unknown training settings {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**merged)


@runtime_checkable
class TrainTask(Protocol):
    """What a model contributes to the trainer."""

    model: nn.Module

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """Scalar loss for one batch (the mean over its items); every random draw comes from ``generator``."""
        ...


class _Progress:
    """The trainer's own state that accelerate checkpoints through ``register_for_checkpointing``."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def _resolve_mixed_precision(value: str) -> str:
    """``auto`` → accelerate's own setting (``accelerate launch --mixed_precision``) when there is one, else bf16 on a
    bf16-capable GPU and ``no`` on CPU; an explicit value is kept."""
    if value != "auto":
        return value
    env = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if env:
        return env.lower()
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _make_accelerator(mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    cpu = not torch.cuda.is_available()
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision and PartialState().num_processes == 1:
        # one process may run several trainers one after the other (tests, benchmarks) with different precisions;
        # accelerate keeps its first choice in a process-wide singleton otherwise
        AcceleratorState._reset_state()
    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu, step_scheduler_with_optimizer=False)
    except ValueError as e:  # e.g. fp16 on a machine without a GPU, an unknown ACCELERATE_MIXED_PRECISION
        raise UserError(f"mixed precision {mixed_precision!r}: {str(e).splitlines()[0] if str(e) else e}") from None


class Trainer:
    """Runs a :class:`TrainTask` on a tensor dataset."""

    def __init__(self, task: TrainTask, dataset: Sequence[torch.Tensor], config: TrainConfig,
                 sample_grid: Callable[[nn.Module, torch.Generator], torch.Tensor] | None = None) -> None:
        self.task, self.config = task, config
        self.data = tuple(dataset)
        if not self.data or any(t.shape[0] != self.data[0].shape[0] for t in self.data):
            raise UserError("training data must be one or more tensors with the same first dimension")
        if config.plot:
            curves.require()
        self.plot = curves.available() if config.plot is None else config.plot
        self.accelerator = _make_accelerator(_resolve_mixed_precision(config.mixed_precision))
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        n = self.data[0].shape[0]
        if config.global_batch is None:
            raise UserError("set batch_size (the global batch, split over processes)")
        self.global_batch = int(config.global_batch)
        if self.global_batch > n:
            raise UserError(f"global batch {self.global_batch} is larger than the data set ({n} items)")
        if self.global_batch < self.world:
            raise UserError(f"global batch {self.global_batch} is smaller than the number of processes ({self.world})")
        share = -(-self.global_batch // self.world)  # the largest per-process share
        self.accumulation = -(-share // config.micro_batch_size) if config.micro_batch_size else 1
        if self.global_batch < self.world * self.accumulation:
            raise UserError(f"global batch {self.global_batch} cannot be cut into {self.world} processes x "
                            f"{self.accumulation} micro-batches")
        self.batch_size = int(self.batch_indices_count(self.rank))  # this process's items per optimizer step
        self.steps_per_epoch = n // self.global_batch
        if config.max_steps is not None:
            self.max_steps = int(config.max_steps)
        elif config.epochs is not None:
            self.max_steps = max(1, int(math.ceil(config.epochs * self.steps_per_epoch)))
        else:
            raise UserError("set max_steps or epochs")
        if config.warmup_steps is not None:
            self.warmup = int(config.warmup_steps)
        else:
            self.warmup = int(round((config.warmup_epochs or 0) * self.steps_per_epoch))
        self.sample_grid = sample_grid or getattr(task, "sample_grid", None)
        self.out_dir = Path(config.out_dir)

        torch.manual_seed((config.seed + self.rank) % _SEED_MOD)
        model = task.model
        if config.gradient_checkpointing and hasattr(model, "grad_checkpointing"):
            model.grad_checkpointing = True
        decay, no_decay = [], []
        skip = set(getattr(model, "no_weight_decay", lambda: set())())
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or name in skip or name.endswith(".bias") else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas,
        )
        scheduler = build_lr_scheduler(optimizer, config.lr_schedule, self.warmup, self.max_steps, config.lr, config.min_lr)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.ema = EMA(self.unwrapped, config.ema_decay, device=self.accelerator.device) if config.ema_decay > 0 else None
        self._progress = _Progress()
        self.accelerator.register_for_checkpointing(self._progress)
        self.accelerator.register_save_state_pre_hook(self._save_hook)
        self.accelerator.register_load_state_pre_hook(self._load_hook)

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self._progress.step

    @step.setter
    def step(self, value: int) -> None:
        self._progress.step = int(value)

    # -- schedule -------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based), from the transformers schedule."""
        return self.config.lr * self.scheduler.scheduler.lr_lambdas[0](step)

    # -- data -----------------------------------------------------------------------------------
    def _chunks(self, step: int) -> list[torch.Tensor]:
        """The ``world × accumulation`` item-index chunks of the global batch at ``step`` (sizes differ by ≤ 1)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + epoch) % _SEED_MOD)
        perm = torch.randperm(self.data[0].shape[0], generator=g)
        batch = perm[i * self.global_batch:(i + 1) * self.global_batch]
        return list(torch.tensor_split(batch, self.world * self.accumulation))

    def batch_indices_count(self, rank: int) -> int:
        """How many items process ``rank`` takes per optimizer step."""
        parts = self.world * self.accumulation
        base, extra = divmod(self.global_batch, parts)
        first = rank * self.accumulation
        return sum(base + (1 if c < extra else 0) for c in range(first, first + self.accumulation))

    def micro_batches(self, step: int) -> list[tuple[torch.Tensor, float]]:
        """This process's (item indices, loss weight) for each micro-step of optimizer step ``step``."""
        chunks = self._chunks(step)
        mine = chunks[self.rank * self.accumulation:(self.rank + 1) * self.accumulation]
        return [(idx, len(idx) * self.world / self.global_batch) for idx in mine]

    def batch_indices(self, step: int) -> torch.Tensor:
        """This process's item indices at ``step``: epoch permutations seeded by (seed, epoch)."""
        return torch.cat([idx for idx, _ in self.micro_batches(step)])

    def step_generator(self, step: int, micro: int = 0) -> torch.Generator:
        """The generator of the loss' random draws at (``step``, this process, micro-step ``micro``)."""
        device = self.accelerator.device
        g = torch.Generator(device=device if device.type == "cuda" else "cpu")
        chunk = self.rank + micro * self.world
        g.manual_seed((self.config.seed * 7_919 + step * 104_729 + chunk * 15_485_863) % _SEED_MOD)
        return g

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        """The newest complete checkpoint of this run (``RUN/checkpoint`` when there is none yet)."""
        return ckpt.latest_checkpoint(self.out_dir) or self.out_dir / ckpt.LINK

    def _save_point(self, name: str) -> None:
        """Called between the phases of a save (tests replace it to simulate a kill at each point)."""

    def _save_hook(self, models: list, weights: list, output_dir: str) -> None:
        # the model file holds the unwrapped network's keys (no DDP "module." prefix): loadable by people and by a
        # run with another process count; the EMA is a plain safetensors file beside it
        for i, m in enumerate(models):
            weights[i] = self.accelerator.unwrap_model(m).state_dict()
        if self.ema is not None and self.accelerator.is_main_process:
            from safetensors.torch import save_model

            save_model(self.ema.model, str(Path(output_dir) / "ema.safetensors"), metadata={"format": "pt"})

    def _load_hook(self, models: list, input_dir: str) -> None:
        from safetensors.torch import load_model

        device = str(self.accelerator.device)
        for m in models:
            load_model(self.accelerator.unwrap_model(m), str(Path(input_dir) / "model.safetensors"), device=device)
        models.clear()  # loaded here, not by accelerate (which would expect the wrapped keys)
        if self.ema is not None:
            f = Path(input_dir) / "ema.safetensors"
            if f.exists():
                load_model(self.ema.model, str(f), device=device)
            else:
                warnings.warn(f"{input_dir}: no ema.safetensors; the EMA restarts from the model's weights", stacklevel=2)
                self.ema.model.load_state_dict(self.unwrapped.state_dict())

    def save_checkpoint(self) -> Path:
        """Save a complete checkpoint of this step, crash-safe (see :mod:`mgen.train.checkpoint`)."""
        acc = self.accelerator
        tmp = ckpt.temp_folder(self.out_dir, self.step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._save_point("begin")
            ckpt.begin(self.out_dir, self.step)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        final = self.out_dir / f"{ckpt.PREFIX}{self.step:08d}"
        if acc.is_main_process:
            self._save_point("state-written")
            ckpt.finish(tmp, self.step, {"world": self.world, "global_batch": self.global_batch,
                                         "config": dataclasses.asdict(self.config)})
            self._save_point("marked")
            final = ckpt.publish(tmp, self.step)
            self._save_point("published")
            ckpt.point_link(final)
            self._save_point("linked")
            ckpt.prune(self.out_dir, keep=final, keep_every=self.config.keep_every)
            self._save_point("pruned")
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, directory: str | os.PathLike | None = None) -> bool:
        """Restore the newest complete checkpoint in ``out_dir`` (or ``directory``); False when there is none."""
        d = Path(directory) if directory else ckpt.latest_checkpoint(self.out_dir)
        if d is None or ckpt.step_of(d) is None:
            for name in (ckpt.LINK, *ckpt.LEGACY):
                if (self.out_dir / name / "state.pt").exists():
                    raise UserError(f"{self.out_dir / name}: a checkpoint of an older mgen, which this version cannot "
                                    "resume; start afresh with --no-resume or another --out")
            if directory is not None:
                raise UserError(f"{directory}: not a complete mgen training checkpoint")
            return False
        self.accelerator.load_state(str(d))
        return True

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def eval_model(self) -> nn.Module:
        """The EMA model when EMA is on, else the trained model."""
        return self.ema.model if self.ema is not None else self.unwrapped

    # -- outputs --------------------------------------------------------------------------------
    def _make_out_dir(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"{self.out_dir}: it or one of its parents is a regular file") from None
        except OSError as e:
            raise UserError(f"cannot create output folder {self.out_dir}: {e.strerror or e}") from None
        if not os.access(self.out_dir, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to output folder {self.out_dir}")

    @property
    def curves_path(self) -> Path:
        """``RUN/curves.png``: loss and learning rate against the step."""
        return self.out_dir / "curves.png"

    def write_curves(self) -> Path | None:
        """Redraw ``curves.png`` from ``log.jsonl`` (main process, when plotting is on)."""
        log = self.out_dir / "log.jsonl"
        if not (self.plot and self.accelerator.is_main_process and log.exists()):
            return None
        try:
            return curves.write_curves(log, self.curves_path, title=self.out_dir.name)
        except Exception as e:  # a plot must never cost a training run
            if self.config.plot:
                raise
            warnings.warn(f"could not draw {self.curves_path}: {e}", stacklevel=2)
            return None

    # -- loop -----------------------------------------------------------------------------------
    def train(self, resume: bool = True, stop_after: int | None = None) -> dict[str, float]:
        """Train to ``max_steps`` (or ``stop_after`` steps of this call); returns the last log record."""
        import json

        c, acc = self.config, self.accelerator
        if acc.is_main_process:
            self._make_out_dir()
            clean_stale_temps(self.out_dir / "samples")
        acc.wait_for_everyone()
        if resume:
            self.load_checkpoint()
        end = self.max_steps if stop_after is None else min(self.max_steps, self.step + stop_after)
        bar = tqdm(total=self.max_steps, initial=self.step, desc="train", disable=not (c.progress and acc.is_main_process),
                   dynamic_ncols=True)
        record: dict[str, float] = {}
        running, count = 0.0, 0
        self.model.train()
        log = open(self.out_dir / "log.jsonl", "a+") if acc.is_main_process else None
        if log is not None and log.tell() > 0:  # a kill may have cut the last line: start on a fresh one
            log.seek(log.tell() - 1)
            if log.read(1) != "\n":
                log.write("\n")
        try:
            while self.step < end:
                lr = self.optimizer.param_groups[0]["lr"]  # set by the scheduler: lr_at(step)
                parts = self.micro_batches(self.step)
                local, finite = 0.0, True
                for m, (idx, weight) in enumerate(parts):
                    batch = [t[idx].to(acc.device) for t in self.data]
                    sync = contextlib.nullcontext() if m == len(parts) - 1 else acc.no_sync(self.model)
                    with sync:
                        with acc.autocast():
                            loss = self.task.loss(self.model, batch, self.step_generator(self.step, m))
                        acc.backward(loss if weight == 1.0 else loss * weight)
                    value = loss.item()
                    finite = finite and math.isfinite(value)
                    local += value * (len(idx) / self.global_batch)
                if self.world > 1:  # every process stops together, none waits forever in a collective
                    finite = bool(acc.reduce(torch.tensor(float(finite), device=acc.device), reduction="sum") == self.world)
                if not finite:
                    raise UserError(f"the training loss is not finite at step {self.step} (lower lr, set grad_clip, "
                                    "or mixed_precision: no)")
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), c.grad_clip) if c.grad_clip > 0 else None
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(self.unwrapped)
                self.step += 1
                running += local
                count += 1
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == end:
                    mean_loss = acc.reduce(torch.tensor(running / count, device=acc.device), reduction="sum")
                    record = {"step": self.step, "loss": float(mean_loss), "lr": lr}
                    if grad_norm is not None:
                        record["grad_norm"] = float(grad_norm)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                    if log is not None:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    running, count = 0.0, 0
                # a keep_every step is saved even when checkpoint_every does not divide it (else its snapshot,
                # which pruning would keep, never exists: keep_every 750 with checkpoint_every 100 kept 1500, 3000)
                if self.step % c.checkpoint_every == 0 or self.step == end or \
                        (c.keep_every and self.step % c.keep_every == 0):
                    self.save_checkpoint()
                    self.write_curves()
                if c.sample_every and self.sample_grid is not None and self.step % c.sample_every == 0:
                    self.write_sample_grid()
        finally:
            bar.close()
            if log is not None:
                log.close()
        return record

    @torch.no_grad()
    def write_sample_grid(self) -> Path | None:
        from mgen.images import save_grid

        if not self.accelerator.is_main_process or self.sample_grid is None:
            return None
        model = self.eval_model
        was_training = model.training
        model.eval()
        images = self.sample_grid(model, self.step_generator(0))
        model.train(was_training)
        return save_grid(images, self.out_dir / "samples" / f"step_{self.step:07d}.png")
