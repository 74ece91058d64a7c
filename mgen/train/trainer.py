"""The one training loop every mgen model plugs into (DESIGN.md: "One trainer serves every model").

A model contributes a :class:`TrainTask`: its network, its loss on a batch, and optionally a sample-grid
hook. The loop owns everything else: AdamW, linear warm-up then constant or cosine learning rate,
EMA, bf16 autocast on GPU (through ``accelerate``), gradient clipping, checkpoints with exact resume,
tqdm progress, a JSON-lines log and periodic sample grids. ``accelerate launch -m mgen train …``
runs it on several processes unchanged: each takes its slice of every global batch.

Exact resume: data order and the loss' randomness are functions of (seed, step, rank) only; the model,
EMA, optimizer and the global RNG state (used by dropout) are checkpointed. Stopping after k steps and
resuming gives bit-identical weights to an uninterrupted run on the same machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from mgen.errors import UserError
from mgen.train.ema import EMA


@dataclass
class TrainConfig:
    """Optimisation settings; read from the ``train:`` section of a model's YAML."""

    out_dir: str = "runs/train"
    max_steps: int | None = None
    epochs: float | None = None  # alternative to max_steps
    batch_size: int | None = None  # per process
    global_batch_size: int | None = None  # alternative to batch_size: split over processes
    lr: float = 1e-4
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.02
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    lr_schedule: str = "constant"  # or "cosine"
    ema_decay: float = 0.0  # 0 disables EMA
    grad_clip: float = 0.0  # 0 disables clipping
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU, none on CPU), "no", "bf16", "fp16"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    sample_every: int = 0
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_mapping(cls, data: dict[str, Any], **overrides: Any) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = set(merged) - known
        if unknown:
            raise UserError(f"unknown training settings {sorted(unknown)}; allowed: {sorted(known)}")
        if "betas" in merged:
            merged["betas"] = tuple(float(b) for b in merged["betas"])
        return cls(**merged)


@runtime_checkable
class TrainTask(Protocol):
    """What a model contributes to the trainer."""

    model: nn.Module

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """Scalar loss for one batch; every random draw comes from ``generator``."""
        ...


class Trainer:
    """Runs a :class:`TrainTask` on a tensor dataset."""

    def __init__(self, task: TrainTask, dataset: Sequence[torch.Tensor], config: TrainConfig,
                 sample_grid: Callable[[nn.Module, torch.Generator], torch.Tensor] | None = None) -> None:
        from accelerate import Accelerator

        self.task, self.config = task, config
        self.data = tuple(dataset)
        if not self.data or any(t.shape[0] != self.data[0].shape[0] for t in self.data):
            raise UserError("training data must be one or more tensors with the same first dimension")
        mp = config.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        self.accelerator = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        n = self.data[0].shape[0]
        if config.batch_size is None and config.global_batch_size is None:
            raise UserError("set batch_size (per process) or global_batch_size")
        self.batch_size = config.batch_size or max(1, config.global_batch_size // self.world)
        self.global_batch = self.batch_size * self.world
        if self.global_batch > n:
            raise UserError(f"global batch {self.global_batch} is larger than the data set ({n} items)")
        self.steps_per_epoch = n // self.global_batch
        if config.max_steps is not None:
            self.max_steps = int(config.max_steps)
        elif config.epochs is not None:
            self.max_steps = int(math.ceil(config.epochs * self.steps_per_epoch))
        else:
            raise UserError("set max_steps or epochs")
        if config.warmup_steps is not None:
            self.warmup = int(config.warmup_steps)
        else:
            self.warmup = int(round((config.warmup_epochs or 0) * self.steps_per_epoch))
        self.sample_grid = sample_grid or getattr(task, "sample_grid", None)
        self.out_dir = Path(config.out_dir)

        torch.manual_seed(config.seed + self.rank)
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
        self.ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.step = 0

    # -- schedule -------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        c = self.config
        if step < self.warmup:
            return c.lr * (step + 1) / self.warmup
        if c.lr_schedule == "cosine":
            progress = (step - self.warmup) / max(1, self.max_steps - self.warmup)
            return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        if c.lr_schedule != "constant":
            raise UserError(f"unknown lr_schedule {c.lr_schedule!r} (constant or cosine)")
        return c.lr

    # -- data -----------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        """This process's item indices at ``step``: epoch permutations seeded by (seed, epoch)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.data[0].shape[0], generator=g)
        start = i * self.global_batch + self.rank * self.batch_size
        return perm[start:start + self.batch_size]

    def step_generator(self, step: int) -> torch.Generator:
        device = self.accelerator.device
        g = torch.Generator(device=device if device.type == "cuda" else "cpu")
        g.manual_seed((self.config.seed * 7_919 + step * 104_729 + self.rank * 15_485_863) % (2**63 - 1))
        return g

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def save_checkpoint(self) -> None:
        from mgen.hub import save_safetensors

        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tmp = self.out_dir / ".checkpoint-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_safetensors(self.unwrapped.state_dict(), tmp / "model.safetensors")
            if self.ema is not None:
                save_safetensors(self.ema.state_dict(), tmp / "ema.safetensors")
            torch.save({"optimizer": self.optimizer.state_dict(), "step": self.step,
                        "rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                       tmp / "state.pt")
            (tmp / "trainer.json").write_text(json.dumps({"step": self.step, "config": dataclasses.asdict(self.config)},
                                                         indent=2, default=str))
            old = self.out_dir / ".checkpoint-old"
            shutil.rmtree(old, ignore_errors=True)
            if self.checkpoint_dir.exists():
                self.checkpoint_dir.rename(old)
            tmp.rename(self.checkpoint_dir)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, directory: str | os.PathLike | None = None) -> bool:
        """Restore the latest checkpoint in ``out_dir`` (or ``directory``); False when there is none."""
        from mgen.hub import load_checkpoint

        d = Path(directory) if directory else self.checkpoint_dir
        if not (d / "state.pt").exists():
            return False
        self.unwrapped.load_state_dict(load_checkpoint(d / "model.safetensors"))
        if self.ema is not None and (d / "ema.safetensors").exists():
            self.ema.load_state_dict(load_checkpoint(d / "ema.safetensors"))
        state = torch.load(d / "state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return True

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def eval_model(self) -> nn.Module:
        """The EMA model when EMA is on, else the trained model."""
        return self.ema.model if self.ema is not None else self.unwrapped

    # -- loop -----------------------------------------------------------------------------------
    def train(self, resume: bool = True, stop_after: int | None = None) -> dict[str, float]:
        """Train to ``max_steps`` (or ``stop_after`` steps of this call); returns the last log record."""
        if resume:
            self.load_checkpoint()
        c, acc = self.config, self.accelerator
        self.out_dir.mkdir(parents=True, exist_ok=True)
        end = self.max_steps if stop_after is None else min(self.max_steps, self.step + stop_after)
        bar = tqdm(total=self.max_steps, initial=self.step, desc="train", disable=not (c.progress and acc.is_main_process),
                   dynamic_ncols=True)
        record: dict[str, float] = {}
        running, count = 0.0, 0
        self.model.train()
        log = open(self.out_dir / "log.jsonl", "a") if acc.is_main_process else None
        try:
            while self.step < end:
                lr = self.lr_at(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                idx = self.batch_indices(self.step)
                batch = [t[idx].to(acc.device) for t in self.data]
                with acc.autocast():
                    loss = self.task.loss(self.model, batch, self.step_generator(self.step))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), c.grad_clip) if c.grad_clip > 0 else None
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(self.unwrapped)
                self.step += 1
                running += loss.item()
                count += 1
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == end:
                    mean_loss = acc.reduce(torch.tensor(running / count, device=acc.device), reduction="mean")
                    record = {"step": self.step, "loss": float(mean_loss), "lr": lr}
                    if grad_norm is not None:
                        record["grad_norm"] = float(grad_norm)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                    if log is not None:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    running, count = 0.0, 0
                if self.step % c.checkpoint_every == 0 or self.step == end:
                    self.save_checkpoint()
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
