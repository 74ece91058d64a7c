"""``keep_every``: checkpoints of steps divisible by it survive pruning (a learning curve's snapshots)."""

from pathlib import Path

import pytest

from mgen.errors import UserError
from mgen.train import checkpoint as ckpt
from mgen.train.trainer import TrainConfig


def _folders(d: Path, steps: list[int]) -> None:
    for s in steps:
        (d / f"{ckpt.PREFIX}{s:08d}").mkdir()


def test_prune_keeps_newest_only_by_default(tmp_path):
    _folders(tmp_path, [100, 200, 300])
    ckpt.prune(tmp_path, keep=tmp_path / f"{ckpt.PREFIX}{300:08d}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{ckpt.PREFIX}{300:08d}"]


def test_prune_keeps_multiples_of_keep_every(tmp_path):
    _folders(tmp_path, [100, 200, 250, 300, 500])
    ckpt.prune(tmp_path, keep=tmp_path / f"{ckpt.PREFIX}{500:08d}", keep_every=250)
    assert sorted(int(p.name[len(ckpt.PREFIX):]) for p in tmp_path.iterdir()) == [250, 500]


def test_keep_every_is_validated():
    with pytest.raises(UserError, match="keep_every"):
        TrainConfig(keep_every=-1)


def test_keep_every_steps_are_saved_even_off_the_checkpoint_grid(tmp_path):
    from train_helpers import trainer

    t = trainer(tmp_path, max_steps=12, checkpoint_every=4, keep_every=6)
    t.train()
    steps = sorted(int(p.name[len(ckpt.PREFIX):]) for p in tmp_path.glob(f"{ckpt.PREFIX}*") if p.is_dir())
    assert steps == [6, 12]  # 6 is not a multiple of checkpoint_every; 4 and 8 are pruned
