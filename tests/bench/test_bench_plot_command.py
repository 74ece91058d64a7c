"""``mgen bench … --plot`` and ``mgen bench plot FILE.json`` (``mgen.commands.bench``) through the real CLI:
charts of the committed results, refusal without matplotlib before any work, bad input in one line (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mgen.bench import enat, recap, report
from mgen.cli import main
from mgen.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def no_matplotlib(monkeypatch):
    """``import matplotlib`` fails (and ``find_spec`` raises), as when the ``mgen[plot]`` extra is not installed."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.mark.parametrize("committed", ["benchmarks/recap/recap-maskgit-digits.json",
                                       "benchmarks/enat_vs_maskgit/small-cpu-fp32-b2.json"])
def test_plot_a_committed_result(committed, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "chart.png"
    assert main(["bench", "plot", str(ROOT / committed), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert f"wrote {out}" in capsys.readouterr().out


def test_enat_plot_option_writes_the_chart_beside_the_report(tmp_path):
    pytest.importorskip("matplotlib")
    argv = ["bench", "enat", "--size", "tiny", "--steps", "2", "--batch-size", "1", "--out", str(tmp_path), "--plot"]
    assert main(argv) == 0
    assert (tmp_path / "enat_vs_maskgit.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "enat_vs_maskgit.json").exists()


def test_no_matplotlib_helpers(no_matplotlib, tmp_path):
    assert not report.plot_available()
    with pytest.raises(UserError, match=r"needs matplotlib.*pip install 'mgen\[plot\]'"):
        report.require_plot()
    assert report.write_frontier_chart([], tmp_path / "f.png", "KL") is None  # the joint benches: silently no chart
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("argv", [["bench", "recap", "--model", "maskgit-digits", "--plot"],
                                  ["bench", "enat", "--size", "tiny", "--plot"],
                                  ["bench", "plot", str(ROOT / "benchmarks/recap/recap-maskgit-digits.json")]])
def test_plot_without_matplotlib_is_refused_before_any_work(argv, no_matplotlib, monkeypatch, tmp_path, capsys):
    def must_not_run(*a, **k):
        raise AssertionError("benchmark work ran before the matplotlib check")

    monkeypatch.setattr(recap, "run", must_not_run)
    monkeypatch.setattr(enat, "run", must_not_run)
    monkeypatch.setattr(report, "read_result", must_not_run)
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "pip install 'mgen[plot]'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"),
    ("not json at all", "not a readable JSON"),
    ('{"model": "maskgit", "K": 8, "ratio": 1.6}', "not a benchmark result"),
    ('{"meta": {"bench": "fid"}, "rows": []}', "has no chart"),
    ('{"bench": "recap", "model": "mar-digits", "K8_recap_speedup": 0.98}', "no rows"),
])
def test_bad_result_is_one_line_and_no_png(content, needle, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    src = tmp_path / "result.json"
    if content is not None:
        src.write_text(content)
    out = tmp_path / "chart.png"
    assert main(["bench", "plot", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["result.json"])
