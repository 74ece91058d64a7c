"""Several processes (issue 16.1): the config's batch is the global batch whatever the process count, the split
weights keep the gradient of the global mean (also when the batch does not divide), accelerate's
``--mixed_precision`` is honoured unless the config sets one, and a 2-process CPU run (gloo) agrees on its weights."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mgen.train import TrainConfig, Trainer
from train_helpers import LinearTask, data, trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

HERE = Path(__file__).resolve().parent


@pytest.fixture
def fresh_accelerate_state():
    """Tests that change accelerate's process-wide precision leave it unset for the next test."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state()


def _global_mean_grad(task, x, y):
    model = task.model
    model.zero_grad()
    task.loss(model, (x, y), None).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("world,global_batch,micro", [(3, 64, None), (2, 7, None), (3, 64, 10), (1, 16, 5)])
def test_split_keeps_the_global_mean_gradient(tmp_path, world, global_batch, micro):
    """Chunks of every process and micro-step cover the global batch once, sizes differ by <= 1, and the weighted
    chunk gradients averaged over processes (what DDP does) equal the gradient of the mean over the global batch."""
    t = trainer(tmp_path, task=LinearTask(), n=200, batch_size=global_batch, micro_batch_size=micro)
    t.world = world  # the split is a function of (world, rank): evaluate it for every rank of a virtual run
    t.accumulation = math.ceil(math.ceil(global_batch / world) / micro) if micro else 1
    x, y = t.data
    task = LinearTask()
    summed = [torch.zeros_like(p) for p in task.model.parameters()]
    seen = []
    for rank in range(world):
        t.rank = rank
        parts = t.micro_batches(0)
        assert len(parts) == t.accumulation
        for idx, weight in parts:
            seen += idx.tolist()
            for s, g in zip(summed, _global_mean_grad(task, x[idx], y[idx])):
                s += weight * g / world
    sizes = [len(idx) for r in range(world) for idx, _ in (setattr(t, "rank", r) or t.micro_batches(0))]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == global_batch
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))  # seed 0, epoch 0
    assert sorted(seen) == sorted(perm[:global_batch].tolist())
    for s, g in zip(summed, _global_mean_grad(task, x[perm[:global_batch]], y[perm[:global_batch]])):
        torch.testing.assert_close(s, g, rtol=1e-5, atol=1e-7)
    if (world, global_batch) == (3, 64) and micro is None:
        assert sizes == [22, 21, 21]


def test_gradient_accumulation_matches_one_pass(tmp_path):
    """micro_batch_size caps the items per forward pass; the optimizer step stays that of the global batch."""
    one = trainer(tmp_path / "one", task=LinearTask(), batch_size=16, ema_decay=0.0, max_steps=6)
    one.train()
    acc = trainer(tmp_path / "acc", task=LinearTask(), batch_size=16, micro_batch_size=5, ema_decay=0.0, max_steps=6)
    assert acc.accumulation == 4 and [len(i) for i, _ in acc.micro_batches(0)] == [4, 4, 4, 4]
    acc.train()
    for a, b in zip(one.unwrapped.parameters(), acc.unwrapped.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accelerate_mixed_precision_is_honoured(tmp_path, monkeypatch, fresh_accelerate_state):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    t = trainer(tmp_path / "a", max_steps=2)
    assert t.accelerator.mixed_precision == "bf16"
    t.train()
    explicit = trainer(tmp_path / "b", max_steps=2, mixed_precision="no")  # the config's own choice wins
    assert explicit.accelerator.mixed_precision == "no"


SCRIPT = """
import json, sys
sys.path.insert(0, {here!r})
from train_helpers import LinearTask, data
from mgen.train import TrainConfig, Trainer
out = sys.argv[1]
t = Trainer(LinearTask(), data(), TrainConfig(out_dir=out, max_steps=4, batch_size=7, lr=1e-2, ema_decay=0.9,
                                            checkpoint_every=2, log_every=1, progress=False, plot=False))
t.train()
flat = [p.detach().flatten().tolist() for p in t.unwrapped.parameters()]
json.dump({{"rank": t.rank, "world": t.world, "global": t.global_batch, "local": t.batch_size,
           "mp": t.accelerator.mixed_precision, "idx": t.batch_indices(0).tolist(), "weights": flat}},
          open(out + ".rank%d.json" % t.rank, "w"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_two_cpu_processes_with_accelerate_launch(tmp_path, precision, fresh_accelerate_state):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo; accelerate's `--cpu` alone starts one
    process): global batch 7 is split 4 + 3, both ranks end with the same weights, which equal a 1-process run's
    (full precision), the launcher's --mixed_precision reaches the trainer, and the checkpoint resumes on 1 process."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(here=str(HERE)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", precision, "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(script), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"out.rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world"], r["global"], r["local"], r["mp"]) for r in ranks] == \
        [(0, 2, 7, 4, precision), (1, 2, 7, 3, precision)]
    assert not set(ranks[0]["idx"]) & set(ranks[1]["idx"]) and len(ranks[0]["idx"] + ranks[1]["idx"]) == 7
    assert ranks[0]["weights"] == ranks[1]["weights"], "the two processes disagree on the weights"
    ckpt = out / "checkpoint"
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors", "ema.safetensors"} <= \
        {p.name for p in ckpt.iterdir()}
    if precision != "no":
        return
    single = trainer(tmp_path / "single", task=LinearTask(), max_steps=4, batch_size=7, warmup_steps=None,
                     grad_clip=0.0, checkpoint_every=2)
    single.train()
    for p, w in zip(single.unwrapped.parameters(), ranks[0]["weights"]):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(w), rtol=1e-5, atol=1e-6)
    resumed = Trainer(LinearTask(), data(), TrainConfig(out_dir=str(out), max_steps=4, batch_size=7, lr=1e-2,
                                                        ema_decay=0.9, progress=False, plot=False))
    assert resumed.load_checkpoint() and resumed.step == 4  # unwrapped keys: readable by another process count
    for p, w in zip(resumed.unwrapped.parameters(), ranks[0]["weights"]):
        assert p.detach().flatten().tolist() == w
