"""The shared trainer: the loss falls, resume is bit-exact, sample grids are written."""

from __future__ import annotations

from pathlib import Path

import json

import pytest
import torch
from torch import nn

from mgen.errors import UserError
from mgen.train import TrainConfig, Trainer


class TinyTask:
    """Noisy linear regression through an MLP with dropout: exercises the generator and the global RNG."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 1))

    def loss(self, model, batch, generator):
        x, y = batch
        noise = 0.01 * torch.randn(y.shape, generator=generator, device=y.device)
        return ((model(x) - (y + noise)) ** 2).mean()

    def sample_grid(self, model, generator):
        return torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def _trainer(tmp_path, **kw):
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=12, batch_size=8, lr=1e-2, warmup_steps=3, ema_decay=0.9,
                      grad_clip=1.0, checkpoint_every=100, log_every=1, progress=False, **kw)
    return Trainer(TinyTask(), _data(), cfg)


def test_loss_falls(tmp_path):
    t = Trainer(TinyTask(), _data(), TrainConfig(out_dir=str(tmp_path), max_steps=150, batch_size=16, lr=1e-2,
                                                 progress=False, log_every=1))
    t.train()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum(losses[-10:]) / 10 < 0.2 * sum(losses[:10]) / 10


def test_resume_is_bit_exact(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.train()
    first = _trainer(tmp_path / "b")
    first.train(stop_after=5)
    assert first.step == 5 and (tmp_path / "b" / "checkpoint" / "model.safetensors").exists()
    del first
    torch.manual_seed(12345)  # a resumed process starts with some other global RNG state
    resumed = _trainer(tmp_path / "b")
    resumed.train()
    assert resumed.step == 12
    for (n, a), b in zip(straight.unwrapped.state_dict().items(), resumed.unwrapped.state_dict().values()):
        assert torch.equal(a, b), n
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_warmup_and_cosine_schedule(tmp_path):
    """transformers' warm-up + cosine: step s runs at lr*s/W during warm-up (0 at the first step), min_lr at the end."""
    t = _trainer(tmp_path, lr_schedule="cosine", min_lr=1e-4)
    assert t.lr_at(0) == 0.0 and t.lr_at(1) == pytest.approx(1e-2 / 3) and t.lr_at(3) == pytest.approx(1e-2)
    assert t.lr_at(12) == pytest.approx(1e-4)


def test_sample_grid_written(tmp_path):
    t = _trainer(tmp_path, sample_every=6)
    t.train()
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_0000006.png", "step_0000012.png"]


def test_bad_settings(tmp_path):
    with pytest.raises(UserError, match="unknown training settings"):
        TrainConfig.from_mapping({"lr": 1e-3, "bogus": 1})
    with pytest.raises(UserError, match="larger than the data set"):
        Trainer(TinyTask(), _data(8), TrainConfig(out_dir=str(tmp_path), max_steps=1, batch_size=16))
    cfg = TrainConfig.from_mapping({"betas": [0.9, 0.95], "epochs": 2}, out_dir=str(tmp_path), batch_size=8)
    assert cfg.betas == (0.9, 0.95) and Trainer(TinyTask(), _data(), cfg).max_steps == 16


@pytest.mark.slow
def test_two_processes_with_torchrun(tmp_path):
    """The same loop under torchrun (gloo on CPU): the config's batch is the global batch, split over processes.
    (tests/train/test_train_distributed.py runs it under ``accelerate launch``.)"""
    import os
    import socket
    import subprocess
    import sys

    from conftest import REPO_ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from test_foundation_trainer import TinyTask, _data\n"
        "from mgen.train import TrainConfig, Trainer\n"
        "t = Trainer(TinyTask(), _data(), TrainConfig(out_dir=sys.argv[1], max_steps=4, batch_size=8, lr=1e-2,"
        " ema_decay=0.9, progress=False, log_every=1))\n"
        "t.train()\n"
        # one file per rank: the two processes share stdout, and their prints can interleave mid-line
        "open(sys.argv[1] + f'.rank{t.rank}', 'w').write(' '.join(map(str, ['RANK', t.rank, 'WORLD', t.world,"
        " 'GLOBAL', t.global_batch, 'LOCAL', t.batch_size, 'IDX', t.batch_indices(0).tolist()])))\n")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                          str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = sorted((tmp_path / f"out.rank{r}").read_text() for r in range(2))
    assert len(lines) == 2 and all("WORLD 2 GLOBAL 8 LOCAL 4" in line for line in lines)
    idx0, idx1 = (set(eval(line.split("IDX", 1)[1])) for line in lines)
    assert not idx0 & idx1, "processes must see disjoint items"
    assert len(idx0 | idx1) == 8
    assert (tmp_path / "out" / "checkpoint" / "model.safetensors").exists()
