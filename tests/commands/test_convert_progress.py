"""`mgen convert` progress bar (issue 16, item 6): drawn on a terminal, counting what the converter reads;
silenced by --no-progress; never drawn into a pipe (an error stays one line)."""

from __future__ import annotations

import argparse
import io
import sys

import pytest
import torch

from mgen.cli import main
from mgen.commands import convert
from tests_helpers import official_mar_checkpoint


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _convert(monkeypatch, tmp_path, *extra):
    ckpt, n_tensors = official_mar_checkpoint(tmp_path)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    code = main(["convert", "mar", str(ckpt), str(tmp_path / "out"), *extra])
    return code, term.getvalue(), n_tensors


def test_bar_on_a_terminal_counts_what_was_read(monkeypatch, tmp_path):
    code, err, n_tensors = _convert(monkeypatch, tmp_path)
    assert code == 0, err
    assert "convert mar: reading" in err and "convert mar: done" in err and "2/2" in err
    assert f"read 1 file(s), {n_tensors} tensors" in err  # model + model_ema, through mgen.hub.load_checkpoint
    assert "wrote " in err and (tmp_path / "out" / "model_index.json").is_file()


def test_no_progress_silences_it(monkeypatch, tmp_path):
    code, err, _ = _convert(monkeypatch, tmp_path, "--no-progress")
    assert code == 0, err
    assert err == ""
    assert (tmp_path / "out" / "model_index.json").is_file()


def test_flag_exists_and_the_bar_is_built_enabled(monkeypatch, tmp_path):
    p = argparse.ArgumentParser()
    convert.add_arguments(p)
    assert p.parse_args(["mar", "a", "b", "--no-progress"]).no_progress is True
    assert p.parse_args(["mar", "a", "b"]).no_progress is False
    seen = []
    real = convert.progress_bar

    def spy(kind, disable):
        seen.append(disable)
        return real(kind, disable)

    monkeypatch.setattr(convert, "progress_bar", spy)
    ckpt, _ = official_mar_checkpoint(tmp_path)
    assert main(["convert", "mar", str(ckpt), str(tmp_path / "a")]) == 0
    assert main(["convert", "mar", str(ckpt), str(tmp_path / "b"), "--no-progress"]) == 0
    assert seen == [None, True]  # None: tqdm draws it whenever stderr is a terminal


def test_not_drawn_into_a_pipe(capsys, tmp_path):
    ckpt, _ = official_mar_checkpoint(tmp_path)
    assert main(["convert", "mar", str(ckpt), str(tmp_path / "out")]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and cap.out.strip() == f"wrote {tmp_path / 'out'}"
