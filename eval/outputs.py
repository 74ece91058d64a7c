"""Every file the evaluator writes, through :func:`mgen.fileio.atomic_write`, with faults as one line.

A file appears whole or not at all: the bytes are made in memory first, written to a ``.tmp-*`` sibling and
renamed onto the target; any error (a full disk, ``ENOSPC``, included) removes the temp file and becomes one
:class:`~mgen.errors.UserError` naming the path. :func:`check_writable` refuses, before any slow work, an
output path that cannot be created (a parent that is a regular file, a target that is a folder).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mgen.errors import UserError
from mgen.fileio import atomic_write


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """Refuse now (one line) an output ``path`` that cannot be written later: a parent that exists but is not a
    folder, or (``folder=False``) a target that is a folder, or (``folder=True``) a target that is a file."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise UserError(f"{what} {p}: exists and is not a folder")
    if not folder and p.is_dir():
        raise UserError(f"{what} {p}: is a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {p}: {parent} is a regular file, not a folder")
            break
    return p


@contextlib.contextmanager
def one_line_errors(path: str | os.PathLike, what: str = "cannot write") -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into one ``UserError`` line naming it."""
    try:
        yield
    except (FileExistsError, NotADirectoryError) as e:
        raise UserError(f"{what} {path}: a parent of this path is not a folder ({_reason(e)})") from None
    except OSError as e:
        raise UserError(f"{what} {path}: {_reason(e)}") from None


def make_dir(path: str | os.PathLike, what: str = "work dir") -> Path:
    """``mkdir -p`` with one line on failure."""
    p = check_writable(path, what, folder=True)
    with one_line_errors(p, f"cannot create {what}"):
        p.mkdir(parents=True, exist_ok=True)
    return p


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + rename); any fault → one line, no file left."""
    p = Path(path)
    with one_line_errors(p):
        with atomic_write(p) as tmp:
            tmp.write_bytes(data)
    return p


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> Path:
    """``json.dumps(obj)`` + newline written atomically (:func:`write_bytes`)."""
    text = json.dumps(obj, **{"indent": 2, **dump_kwargs}) + "\n"
    return write_bytes(path, text.encode())


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """An ``.npz`` of ``arrays`` written atomically (:func:`write_bytes`)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Any]) -> Path:
    """A safetensors file of ``tensors`` (made in memory, then written atomically)."""
    from safetensors.torch import save

    return write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
