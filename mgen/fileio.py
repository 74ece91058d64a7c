"""Atomic file writes: every file mgen writes appears whole or not at all (README: "never a half-written
output file")."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: the name prefix of every temporary file or folder mgen writes (``.tmp-*``); readers skip hidden names.
TEMP_PREFIX = ".tmp-"


def _default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0o666 minus the umask); ``mkstemp`` uses 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds it is renamed onto ``path`` (with the
    usual file mode), when it fails it is deleted. The parent folder is created."""
    from mgen.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot write {path}: a parent of this path is a regular file") from None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno is None:
            raise
        from mgen.errors import UserError

        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def clean_stale_temps(folder: str | os.PathLike, stem: str = "") -> None:
    """Remove ``.tmp-<stem>*`` files and folders that an earlier, killed run left in ``folder``."""
    import shutil

    d = Path(folder)
    if not d.is_dir():
        return
    for p in d.glob(f"{TEMP_PREFIX}{stem}*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


#: files whose presence marks a folder as one mgen wrote (so ``--force`` may replace it).
MGEN_OUTPUT_MARKERS = ("model_index.json", "config.json", "diffusion_pytorch_model.safetensors", "model.safetensors",
                       "scheduler_config.json", "sampler_config.json", "tokenizer.json", "log.jsonl", "grid.png")


def is_mgen_output(folder: str | os.PathLike) -> bool:
    """True for an empty folder or one holding an mgen output (a marker file at its top level)."""
    d = Path(folder)
    if not d.is_dir():
        return False
    names = {p.name for p in d.iterdir() if not p.name.startswith(".")}
    return not names or bool(names & set(MGEN_OUTPUT_MARKERS))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling (``.tmp-<name>-*``) and rename it onto ``path`` when the block succeeds.

    A kill or an error leaves ``path`` as it was (the temp folder is removed on error; one left by a kill is
    removed by the next call for the same ``path``). An existing non-empty ``path`` is replaced only with
    ``force`` and only when it is an mgen output (:func:`is_mgen_output`); otherwise a ``UserError`` is raised
    before anything is written.
    """
    import shutil

    from mgen.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise UserError(f"{path}: already exists (pass --force to overwrite)")
        if not is_mgen_output(path):
            raise UserError(f"{path}: holds files mgen did not write; refusing to replace it (choose another folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{path}: a parent of this path is a regular file") from None
    except OSError as e:
        raise UserError(f"cannot create {path.parent}: {e.strerror or e}") from None
    clean_stale_temps(path.parent, path.name + "-")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f"{TEMP_PREFIX}{path.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno is None:
            raise
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
