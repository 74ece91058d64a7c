"""`mgen eval` on hostile or careless input (issues 18 and 19): one line, exit 2, nothing half-written.

Every case is a parametrised row: decompression bombs in --fake, hidden temp files a killed run left, outputs
under a regular file, a full disk while writing --json / --save-stats, non-finite or out-of-range numbers.
"""

from __future__ import annotations

import errno
import json
import math
import pathlib
import struct
import zlib

import pytest

from eval_common import inception_weights, small_inception, write_digits_folder  # noqa: F401
from mgen.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _png_header_only(path: pathlib.Path, width: int, height: int) -> pathlib.Path:
    """A valid PNG header declaring ``width × height`` 1-bit pixels with (almost) no data: a decompression bomb
    as far as any reader that trusts the header is concerned."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def folders(tmp_path):
    fake = write_digits_folder(tmp_path / "fake", "train", 4)
    real = write_digits_folder(tmp_path / "real", "test", 4)
    return fake, real


@pytest.mark.parametrize("width, height", [
    (8200, 8200),      # above mgen's MAX_PIXELS (8192²), below Pillow's own limits
    (10000, 10000),    # above Pillow's MAX_IMAGE_PIXELS: its DecompressionBombWarning
    (100000, 100000),  # above twice that: Pillow's DecompressionBombError
])
def test_decompression_bomb_in_fake_is_one_line_naming_the_file(width, height, folders, inception_weights,
                                                                small_inception, capsys, tmp_path):
    fake, real = folders
    bomb = _png_header_only(fake / "zz-bomb.png", width, height)
    out = tmp_path / "r.json"
    rc = main(["eval", "--fake", str(fake), "--real", str(real), "--inception-weights", str(inception_weights),
               "--metrics", "fid", "--json", str(out), "--no-progress"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and str(bomb.resolve()) in line and ("decompression bomb" in line), line
    assert not out.exists()


@pytest.mark.parametrize("name", [".tmp-abc123.png", ".hidden.png", ".tmp-x.jpg"])
def test_hidden_files_in_fake_are_skipped(name, folders, inception_weights, small_inception, capsys, tmp_path):
    fake, real = folders
    (fake / name).write_bytes(b"")  # what a kill during an atomic write leaves (zero bytes)
    out = tmp_path / "r.json"
    rc = main(["eval", "--fake", str(fake), "--real", str(real), "--inception-weights", str(inception_weights),
               "--metrics", "fid,is", "--isc-splits", "2", "--json", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["num_fake"] == 4


@pytest.mark.parametrize("option", ["--json", "--save-stats", "--work-dir"])
def test_output_under_a_regular_file_is_refused_up_front(option, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    target = blocker / ("out.npz" if option == "--save-stats" else "out")
    if option == "--work-dir":
        argv = ["--model", "mar-digits", "--weights", str(tmp_path / "never-loaded.safetensors")]
    else:
        argv = ["--fake", str(tmp_path / "never-read"), "--inception-weights", str(tmp_path / "never.pth")]
    rc = main(["eval", *argv, option, str(target), "--no-progress"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and str(blocker) in line and "regular file" in line, line


def test_json_that_is_a_folder_and_a_foreign_meta_are_refused(tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    rc = main(["eval", "--fake", str(tmp_path), "--json", str(tmp_path / "dir"), "--no-progress"])
    assert rc == 2 and "is a folder" in _one_line(capsys.readouterr().err)
    from mgen.errors import UserError
    from mgen.eval.streaming import stream_features

    work = tmp_path / "work"
    work.mkdir()
    for text in ("[1, 2]", "{not json", "\x00\xff"):
        (work / "meta.json").write_text(text, errors="surrogateescape")
        with pytest.raises(UserError, match="meta.json"):
            stream_features(lambda lab, seeds: None, lambda x: {}, 4, work, progress=False)


def _full_disk(monkeypatch):
    """Every ``Path.write_bytes`` writes half of its data, then fails with ENOSPC (as a full disk does)."""
    def write_bytes(self, data):
        with open(self, "wb") as f:
            f.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("option", ["--json", "--save-stats"])
def test_full_disk_is_one_line_naming_the_path_and_leaves_nothing(option, folders, inception_weights,
                                                                  small_inception, monkeypatch, capsys, tmp_path):
    fake, real = folders
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / ("r.json" if option == "--json" else "ref.npz")
    if option == "--json":
        argv = ["--fake", str(fake), "--metrics", "is", "--isc-splits", "2", "--json", str(target)]
    else:
        argv = ["--real", str(real), "--save-stats", str(target)]
    _full_disk(monkeypatch)
    rc = main(["eval", *argv, "--inception-weights", str(inception_weights), "--no-progress"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and str(target) in line and "No space left on device" in line, line
    assert list(out_dir.iterdir()) == []  # neither the target nor a .tmp-* file


def test_full_disk_while_writing_a_shard_is_one_line(monkeypatch, tmp_path):
    from mgen.errors import UserError
    from mgen.eval.streaming import stream_features

    import torch

    _full_disk(monkeypatch)
    with pytest.raises(UserError, match="No space left on device") as e:
        stream_features(lambda lab, seeds: torch.zeros(len(seeds), 3, 8, 8), lambda x: {"f": x.mean((1, 2, 3))[:, None]},
                        16, tmp_path / "w", shard_size=16, progress=False)
    assert "meta.json" in str(e.value) or "shard-000000" in str(e.value)
    assert not list((tmp_path / "w").glob(".tmp-*"))


FLOAT_CASES = [
    ("--cfg", "nan"), ("--cfg", "inf"), ("--cfg", "-inf"), ("--cfg", "-1"), ("--cfg", "1e9"),
    ("--recap-head-fast-ratio", "nan"), ("--recap-head-fast-ratio", "inf"), ("--recap-head-fast-ratio", "0"),
    ("--recap-head-fast-ratio", "1.5"),
]
INT_CASES = [
    ("--seed", "-1"), ("--seed", str(2**31)), ("--seed", "99999999999999999999999"), ("--metric-seed", "-1"),
    ("--metric-seed", str(2**32)), ("--shard-size", "20"), ("--shard-size", "0"), ("--num-samples", "100000000"),
    ("--steps", "0"), ("--steps", "1000000"), ("--num-classes", "0"), ("--batch-size", "0"),
    ("--kid-subset-size", "1"), ("--pr-k", "0"), ("--isc-splits", "0"), ("--kid-subsets", "0"),
]


@pytest.mark.parametrize("option, value", FLOAT_CASES + INT_CASES)
def test_numbers_out_of_range_are_refused_before_loading(option, value, tmp_path, capsys):
    missing = tmp_path / "never-loaded.safetensors"
    rc = main(["eval", "--model", "mar-digits", "--weights", str(missing), f"{option}={value}",
               "--work-dir", str(tmp_path / "w"), "--no-progress"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and option in line and "never-loaded" not in line, line
    if (option, value) in FLOAT_CASES and not math.isfinite(float(value)):
        assert "finite" in line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("device", ["foo", "cuda:99", "cpu:x"])
def test_bad_device_is_one_line(device, tmp_path, capsys):
    rc = main(["eval", "--fake", str(tmp_path), "--device", device, "--no-progress"])
    assert rc == 2 and "--device" in _one_line(capsys.readouterr().err)


def test_cfg_nan_refused_with_the_shipped_model(run_mgen, tmp_path):
    """The issue's own command: one line, exit 2, before any sampling (no LinAlgError after it)."""
    p = run_mgen("eval", "--model", "mar-digits", "--cfg", "nan", "--work-dir", str(tmp_path / "w"), timeout=120)
    assert p.returncode == 2 and "--cfg must be a finite number" in _one_line(p.stderr)
