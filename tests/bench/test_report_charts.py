"""The one chart writer (``mgen.bench.report.write_chart``) and the charts of the ReCAP and ENAT benchmarks
(``mgen.bench.recap.chart``, ``mgen.bench.enat.chart``) on small result dicts in the real JSON shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mgen.bench import enat, recap
from mgen.bench.report import ChartPoint, read_result, write_chart, write_frontier_chart
from mgen.errors import UserError

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _recap_result(quality: bool = True) -> dict[str, Any]:
    """A ``mgen bench recap`` result: two K, the full baseline and ReCAP (pre 0) at each."""
    rows = []
    for k, ips_full, ips_recap, fid_full, fid_recap in ((8, 150.0, 208.0, 21.3, 18.8), (16, 82.0, 124.0, 16.0, 13.0)):
        rows.append({"K": k, "sampler": "full", "full_evals": k, "cheap_evals": 0, "images_per_s": ips_full,
                     "gflops_per_image": 0.035 * k, "speedup": 1.0})
        rows.append({"K": k, "sampler": "recap", "full_evals": k // 2, "cheap_evals": k // 2, "images_per_s": ips_recap,
                     "pre_full_steps": 0, "cache_steps": 1, "gflops_per_image": 0.02 * k, "speedup": ips_recap / ips_full})
        if quality:
            rows[-2].update(digits_fid=fid_full, digits_accuracy=1.0, quality_samples=300)
            rows[-1].update(digits_fid=fid_recap, digits_accuracy=1.0, quality_samples=300)
    return {"meta": {"bench": "recap", "model": "maskgit-digits", "random_weights": False, "device": "cpu",
                     "threads": 1, "batch_size": 50}, "rows": rows}


def _enat_result() -> dict[str, Any]:
    """A ``mgen bench enat`` result: the three rows of the benchmark."""
    rows = [{"name": "maskgit", "params_M": 40.31, "gflops_per_image": 351.42, "images_per_s": 0.08, "flops_vs_maskgit": 1.0},
            {"name": "enat", "params_M": 74.96, "gflops_per_image": 87.93, "images_per_s": 0.26, "flops_vs_maskgit": 0.25},
            {"name": "enat-no-reuse", "params_M": 74.96, "gflops_per_image": 130.78, "images_per_s": 0.22,
             "flops_vs_maskgit": 0.372}]
    return {"meta": {"bench": "enat", "size": "small", "device": "cpu", "batch_size": 2, "num_steps": 8, "cfg": 2.5,
                     "dtype": "float32"}, "rows": rows}


class _Capture:
    """Stands in for ``write_chart``: records what a benchmark's chart asked to draw."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, series, path, xlabel, ylabel, **kw):
        self.calls.append({"series": {k: list(v) for k, v in series.items()}, "xlabel": xlabel, "ylabel": ylabel, **kw})
        return Path(path)


def test_recap_chart_is_a_png(tmp_path):
    out = recap.chart(_recap_result(), tmp_path / "recap.png")
    assert out == tmp_path / "recap.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["recap.png"]  # no temporary file left behind


def test_recap_chart_draws_quality_vs_images_per_s_with_the_baseline(monkeypatch, tmp_path):
    cap = _Capture()
    monkeypatch.setattr(recap, "write_chart", cap)
    recap.chart(_recap_result(), tmp_path / "r.png")
    (call,) = cap.calls
    assert list(call["series"]) == ["full (no ReCAP)", "recap"]
    assert call["xlabel"] == "images / s" and "digits-FID" in call["ylabel"]
    full = {p.label: (p.x, p.y) for p in call["series"]["full (no ReCAP)"]}
    assert full == {"K=8": (150.0, 21.3), "K=16": (82.0, 16.0)}
    assert {p.label for p in call["series"]["recap"]} == {"K=8, pre 0", "K=16, pre 0"}


def test_recap_chart_without_quality_uses_flops(monkeypatch, tmp_path):
    cap = _Capture()
    monkeypatch.setattr(recap, "write_chart", cap)
    recap.chart(_recap_result(quality=False), tmp_path / "r.png")
    assert "GFLOPs" in cap.calls[0]["ylabel"]
    assert sorted(p.y for p in cap.calls[0]["series"]["recap"]) == pytest.approx([0.16, 0.32])


def test_enat_chart_is_a_png_with_one_series_per_model(monkeypatch, tmp_path):
    out = enat.chart(_enat_result(), tmp_path / "enat.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    cap = _Capture()
    monkeypatch.setattr(enat, "write_chart", cap)
    enat.chart(_enat_result(), tmp_path / "e.png")
    series = cap.calls[0]["series"]
    assert list(series) == ["maskgit", "enat", "enat-no-reuse"]
    assert (series["enat"][0].x, series["enat"][0].y) == (0.26, 87.93)


@pytest.mark.parametrize("chart, result", [(recap.chart, {"meta": {"bench": "recap"}, "rows": []}),
                                           (enat.chart, {"meta": {"bench": "enat"}, "rows": [{"name": "enat"}]})])
def test_chart_without_usable_rows_is_refused_and_writes_nothing(chart, result, tmp_path):
    with pytest.raises(UserError, match="no rows"):
        chart(result, tmp_path / "x.png")
    assert not any(tmp_path.iterdir())


def test_write_chart_error_bars_and_frontier_chart(tmp_path):
    out = write_chart({"a": [ChartPoint(2, 1.0, "two", 0.5, 1.5), ChartPoint(1, 2.0)]}, tmp_path / "a.png", "x", "y",
                      log_y=True)
    assert out.read_bytes()[:8] == PNG_MAGIC
    rows = [{"method": m, "ffe_flops_per_token": c, "kl_q_p": kl, "ci": (kl * 0.9, kl * 1.1)}
            for m, c, kl in (("marginal", 0.25, 3.0), ("adjust", 0.4, 1.0), ("exact", 1.0, 0.0))]
    assert write_frontier_chart(rows, tmp_path / "f.png", "KL", ci_key="ci", y_offset=1e-6).read_bytes()[:8] == PNG_MAGIC


def test_read_result_kinds_and_older_layouts(tmp_path):
    new = tmp_path / "new.json"
    new.write_text('{"meta": {"bench": "enat"}, "rows": [{"name": "enat"}]}')
    assert read_result(new)[0] == "enat"
    old_recap = tmp_path / "old_recap.json"
    old_recap.write_text('{"bench": "recap", "model": "m", "rows": [{"K": 8}]}')
    kind, res = read_result(old_recap)
    assert kind == "recap" and res["meta"]["model"] == "m" and res["rows"] == [{"K": 8}]
    old_enat = tmp_path / "old_enat.json"
    old_enat.write_text('{"config": {"size": "small"}, "rows": [{"name": "enat", "flops_vs_maskgit": 0.25}]}')
    kind, res = read_result(old_enat)
    assert kind == "enat" and res["meta"]["size"] == "small"


@pytest.mark.parametrize("text, needle", [(None, "no such file"), ("{not json", "not a readable JSON"),
                                          ("[1, 2]", "not a benchmark result"),
                                          ('{"model": "maskgit", "ratio": 1.6}', "not a benchmark result")])
def test_read_result_refuses_what_is_not_a_result(text, needle, tmp_path):
    path = tmp_path / "r.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=needle):
        read_result(path)
