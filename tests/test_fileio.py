"""Atomic writes: whole file or none, usual permissions."""

from __future__ import annotations

import os

import pytest

from mgen.fileio import atomic_write


def test_atomic_write_renames_with_the_usual_mode(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_write(target) as tmp:
        tmp.write_text("{}")
        assert not target.exists()
    assert target.read_text() == "{}"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
