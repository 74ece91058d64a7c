"""`mgen bench fid` (mgen/bench/fid.py): a result for mgen.bench.report.write_report, both sides on the same files."""

from __future__ import annotations

import argparse
import json

from eval_common import inception_weights, small_inception  # noqa: F401
from mgen.bench import fid as bench_fid

TITLE_LINE = f"# {bench_fid.TITLE}"


def test_bench_fid_result_and_report(tmp_path, inception_weights, small_inception):
    p = argparse.ArgumentParser()
    bench_fid.add_arguments(p)
    args = p.parse_args(["--num", "4", "--size", "16", "--batch-size", "2", "--repeats", "1", "--threads", "1",
                         "--inception-weights", str(inception_weights), "--out", str(tmp_path / "out")])
    r = bench_fid.run(args)
    assert [row["side"] for row in r["rows"]] == ["mgen", "torch-fidelity"]
    assert r["meta"]["images"] == 4 and r["meta"]["max_rel_feature_diff"] < 1e-4 and r["meta"]["machine"]["torch"]
    assert all(row["images_per_s"] > 0 for row in r["rows"])
    jpath, mpath = (tmp_path / "out" / "fid.json", tmp_path / "out" / "fid.md")  # written through write_report
    assert r["written"] == [str(jpath), str(mpath)]
    assert json.loads(jpath.read_text())["rows"][0]["side"] == "mgen"
    assert "| side |" in mpath.read_text() and TITLE_LINE in mpath.read_text()
