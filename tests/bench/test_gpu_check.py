"""benchmarks/gpu/run.sh: shell syntax, and its --dry-run (CPU, tiny shapes, every section) finishes cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

RUN = REPO_ROOT / "benchmarks" / "gpu" / "run.sh"


def test_run_sh_syntax():
    assert subprocess.run(["bash", "-n", str(RUN)], capture_output=True, text=True).returncode == 0


def test_dry_run_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(["bash", str(RUN), "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    sections = {r["section"] for r in result["rows"]}
    assert sections == {"attention", "sample", "train"}
    assert not [r for r in result["rows"] if r.get("ok") is False]
    cases = {r["case"] for r in result["rows"]}
    assert {"mar-digits fp32", "mar-digits bf16", "dit-digits bf16", "maskgit-digits bf16"} <= cases
    assert (tmp_path / "results.md").read_text().startswith("# mgen GPU check (dry run)")


def test_without_a_gpu_says_so():
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(["bash", str(RUN)], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "no CUDA device" in p.stdout
