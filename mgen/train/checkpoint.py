"""Crash-safe checkpoint folders of a training run (issue 19.2).

Layout of a run folder ``RUN/``::

    RUN/checkpoint-00000040/   a complete checkpoint (accelerate ``save_state`` files + ema.safetensors + trainer.json)
    RUN/checkpoint -> checkpoint-00000040   a relative symlink to the newest one (a convenience for people)
    RUN/.tmp-checkpoint-00000050/           a save in progress (or one a kill interrupted)

A save writes everything into ``.tmp-checkpoint-<step>``, writes ``trainer.json`` last (the completeness mark),
renames the folder to ``checkpoint-<step>`` in one atomic ``rename``, then repoints the symlink (another atomic
``rename``) and only then deletes the older checkpoints. Resume does not trust the symlink: it scans for the
complete checkpoint with the highest step, so a kill at any point of a save finds either the old or the new
checkpoint, never nothing. ``.checkpoint-old`` (the name mgen's earlier two-rename save used for the window
between its renames) and a plain ``checkpoint/`` folder are scanned as well. Temp folders a kill left are
removed by the next save.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mgen.fileio import TEMP_PREFIX, atomic_write, clean_stale_temps

LINK = "checkpoint"
PREFIX = "checkpoint-"
MARKER = "trainer.json"
FORMAT = "accelerate-state-1"  # trainer.json's "format": what this layout's loader reads
LEGACY = (".checkpoint-old",)


def step_of(folder: Path) -> int | None:
    """The step of a complete checkpoint folder (from its ``trainer.json``), or None when it is not one."""
    try:
        data = json.loads((folder / MARKER).read_text())
        if data.get("format") != FORMAT:
            return None
        return int(data["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def complete_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every complete checkpoint under ``run_dir`` as (step, folder), oldest first."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    candidates = [p for p in d.glob(f"{PREFIX}*") if p.is_dir() and not p.is_symlink()]
    candidates += [d / name for name in (LINK, *LEGACY) if (d / name).is_dir() and not (d / name).is_symlink()]
    found = [(s, p) for p in candidates if (s := step_of(p)) is not None]
    # for equal steps prefer a numbered folder (written by this scheme) over a legacy name
    return sorted(found, key=lambda sp: (sp[0], sp[1].name.startswith(PREFIX)))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``run_dir`` (None when there is none)."""
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def temp_folder(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the save of ``step`` is built (the same name on every process of a multi-process run)."""
    return Path(run_dir) / f"{TEMP_PREFIX}{PREFIX}{step:08d}"


def begin(run_dir: str | os.PathLike, step: int) -> Path:
    """Remove what killed saves left (``.tmp-*`` in ``run_dir``) and create the empty temp folder for ``step``."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(d)
    tmp = temp_folder(d, step)
    tmp.mkdir()
    return tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def finish(tmp: Path, step: int, record: dict) -> None:
    """Make the temp folder's files durable and give them the usual file mode, then write the completeness mark
    (``trainer.json``, atomically, the last file of all)."""
    mask = os.umask(0)
    os.umask(mask)
    for f in tmp.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)  # safetensors writes 0600; the rest of the run folder is 0666 - umask
            _fsync(f)
    with atomic_write(tmp / MARKER) as p:
        p.write_text(json.dumps({"format": FORMAT, "step": step, **record}, indent=2, default=str))
    _fsync(tmp / MARKER)
    _fsync(tmp)


def publish(tmp: Path, step: int) -> Path:
    """Rename the finished temp folder to ``checkpoint-<step>`` (one atomic rename); returns the new folder."""
    final = tmp.parent / f"{PREFIX}{step:08d}"
    if final.exists():  # the same step saved by an earlier run in this folder (e.g. after --no-resume)
        aside = tmp.parent / f"{TEMP_PREFIX}replaced-{final.name}"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)
    return final


def point_link(final: Path) -> None:
    """Repoint ``RUN/checkpoint`` at ``final`` with one atomic rename of a new relative symlink.

    A plain ``checkpoint/`` folder of an older layout is removed first (``final`` is newer and complete). Where
    symlinks cannot be made the link is skipped: resume scans the folders and does not need it.
    """
    run_dir = final.parent
    link = run_dir / LINK
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    tmp = run_dir / f"{TEMP_PREFIX}{LINK}-link"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(final.name, tmp, target_is_directory=True)
    except OSError:
        return
    os.replace(tmp, link)


def prune(run_dir: str | os.PathLike, keep: Path, keep_every: int = 0) -> None:
    """Delete every checkpoint folder in ``run_dir`` but ``keep`` (older ones, and legacy ``.checkpoint-old``);
    with ``keep_every`` > 0 the folders of steps divisible by it stay too (a learning curve's snapshots)."""
    d = Path(run_dir)

    def kept_step(p: Path) -> bool:
        tail = p.name[len(PREFIX):]
        return keep_every > 0 and p.name.startswith(PREFIX) and tail.isdigit() and int(tail) % keep_every == 0

    for p in [*d.glob(f"{PREFIX}*"), *(d / name for name in LEGACY)]:
        if p != keep and p.is_dir() and not p.is_symlink() and not kept_step(p):
            shutil.rmtree(p, ignore_errors=True)
