"""Crash-safe checkpoints (issue 19.2): a kill at any point of a save resumes at the newest complete checkpoint,
and the resumed run ends bit-identical to an uninterrupted one; temp folders of a killed save are cleaned."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from mgen.errors import UserError
from mgen.train import checkpoint as ckpt
from train_helpers import same_weights, trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the point runs (BaseException: no ``except Exception`` catches it)."""


# (point of the save of step 8 where the process dies, the step a resume must find)
POINTS = [("begin", 4), ("state-written", 4), ("marked", 4), ("published", 8), ("linked", 8), ("pruned", 8)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of 12 steps (checkpoints at 4, 8, 12)."""
    t = trainer(tmp_path_factory.mktemp("straight"))
    t.train()
    return t


def _kill_at(t, point: str, step: int) -> None:
    def save_point(name: str) -> None:
        if name == point and t.step == step:
            raise Killed(name)

    t._save_point = save_point


@pytest.mark.parametrize("point,resume_step", POINTS, ids=[p for p, _ in POINTS])
def test_kill_during_save_resumes_at_newest_complete(tmp_path, reference, point, resume_step):
    run = tmp_path / "run"
    t = trainer(run)
    _kill_at(t, point, 8)
    with pytest.raises(Killed):
        t.train()
    del t
    torch.manual_seed(999)  # a new process starts with other RNG states
    probe = trainer(run)
    assert probe.load_checkpoint() and probe.step == resume_step
    assert probe.checkpoint_dir.name == f"checkpoint-{resume_step:08d}"
    resumed = trainer(run)
    resumed.train()
    assert resumed.step == 12
    same_weights(reference, resumed)
    left = sorted(p.name for p in run.iterdir())
    assert left == ["checkpoint", "checkpoint-00000012", "curves.png", "log.jsonl"] or \
        left == ["checkpoint", "checkpoint-00000012", "log.jsonl"], left  # temp folders and old checkpoints gone
    assert os.readlink(run / "checkpoint") == "checkpoint-00000012"


@pytest.mark.parametrize("layout", ["symlink", "folder"])
def test_checkpoint_moved_to_old_name(tmp_path, reference, layout):
    """`mv RUN/checkpoint RUN/.checkpoint-old` (the window between the two renames of mgen's earlier save): the
    resume still finds step 8, whether `checkpoint` is the symlink or a plain folder."""
    run = tmp_path / "run"
    trainer(run).train(stop_after=8)
    if layout == "folder":  # a filesystem without symlinks: the checkpoint is a plain folder named `checkpoint`
        os.unlink(run / "checkpoint")
        os.replace(run / "checkpoint-00000008", run / "checkpoint")
    shutil.move(str(run / "checkpoint"), str(run / ".checkpoint-old"))
    assert not (run / "checkpoint").exists()
    probe = trainer(run)
    assert probe.load_checkpoint() and probe.step == 8
    resumed = trainer(run)
    resumed.train()
    same_weights(reference, resumed)
    assert not (run / ".checkpoint-old").exists()


def test_stale_temp_folders_are_cleaned_by_next_save(tmp_path):
    run = tmp_path / "run"
    t = trainer(run, max_steps=4)
    _kill_at(t, "state-written", 4)
    with pytest.raises(Killed):
        t.train()
    assert (run / ".tmp-checkpoint-00000004").is_dir()
    (run / ".tmp-checkpoint-00000099").mkdir()  # any other killed save
    (run / ".tmp-x.png").write_bytes(b"")  # a killed atomic write
    trainer(run, max_steps=4).train()
    assert not list(run.glob(".tmp-*"))
    assert ckpt.step_of(run / "checkpoint") == 4


def test_incomplete_checkpoints_are_ignored(tmp_path):
    """A folder without its trainer.json, or with a corrupt one, is not a checkpoint."""
    run = tmp_path / "run"
    trainer(run).train(stop_after=4)
    (run / "checkpoint-00000010").mkdir()
    (run / "checkpoint-00000011").mkdir()
    (run / "checkpoint-00000011" / "trainer.json").write_text("{not json")
    assert ckpt.latest_checkpoint(run).name == "checkpoint-00000004"


def test_same_step_saved_again_replaces_it(tmp_path):
    run = tmp_path / "run"
    trainer(run, max_steps=4).train()
    again = trainer(run, max_steps=4)
    again.train(resume=False)  # --no-resume: step 4 again
    assert ckpt.latest_checkpoint(run).name == "checkpoint-00000004" and not list(run.glob(".tmp-*"))


def test_old_format_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.pt").write_bytes(b"")
    (run / "checkpoint" / "trainer.json").write_text('{"step": 3}')
    with pytest.raises(UserError, match="older mgen"):
        trainer(run).train()


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {here!r})
from train_helpers import trainer
t = trainer(sys.argv[1])
def save_point(name):
    if name == sys.argv[2] and t.step == 8:
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no finally, no cleanup
t._save_point = save_point
t.train()
"""


@pytest.mark.slow
@pytest.mark.parametrize("point,resume_step", [("state-written", 4)])
def test_real_sigkill_during_save(tmp_path, reference, point, resume_step):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(here=str(Path(__file__).resolve().parent)))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(run), point], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    probe = trainer(run)
    assert probe.load_checkpoint() and probe.step == resume_step
    resumed = trainer(run)
    resumed.train()
    same_weights(reference, resumed)
    assert not list(run.glob(".tmp-*"))
