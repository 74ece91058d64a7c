"""Packaging: the tokenizers shadowing hazard (docs/ARCHITECTURE.md, "Layers") in editable and regular installs, entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PROBE = (
    "import transformers, tokenizers, mgen.tokenizers, mgen.samplers, mgen.eval, os, sys;"
    "assert 'site-packages' in tokenizers.__file__ or 'dist-packages' in tokenizers.__file__, tokenizers.__file__;"
    "assert hasattr(tokenizers, 'Tokenizer') and hasattr(tokenizers, '__version__');"
    "from transformers import PreTrainedTokenizerFast;"
    "assert mgen.tokenizers.__name__ == 'mgen.tokenizers';"
    "print(tokenizers.__file__); print(mgen.tokenizers.__file__); print(mgen.__file__)"
)


def _probe(cwd: Path, env: dict | None = None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_repo_root_on_sys_path_does_not_shadow_hf_tokenizers():
    """`python -c` puts the working directory first on sys.path: our tokenizers/ must step aside."""
    hf, ours, mgen_file = _probe(REPO_ROOT)
    assert Path(ours).resolve() == (REPO_ROOT / "tokenizers" / "__init__.py").resolve()
    assert Path(hf).resolve() != Path(ours).resolve()


def test_installed_editable_from_elsewhere():
    hf, ours, mgen_file = _probe(Path(sysconfig.get_paths()["purelib"]).parent)
    assert "site-packages" in hf


def test_python_m_mgen_from_repo_root(run_mgen):
    out = run_mgen("--help")
    assert out.returncode == 0 and "sample" in out.stdout and "info" in out.stdout


@pytest.mark.slow
def test_regular_install(tmp_path):
    """A wheel (regular, non-editable) install: imports work from elsewhere and from the repo root."""
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(REPO_ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheel_dir.glob("mgen-*.whl"))
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    assert (target / "mgen" / "tokenizers" / "__init__.py").is_file()
    assert (target / "mgen" / "configs" / "mar-b.yaml").is_file()
    assert not (target / "tokenizers").exists(), "the wheel must not install a top-level 'tokenizers'"
    env = {"PYTHONPATH": str(target)}
    # outside the checkout the installed copy is used
    hf, ours, mgen_file = _probe(tmp_path, env)
    assert Path(ours).is_relative_to(target) and Path(mgen_file).is_relative_to(target)
    # inside the checkout (root first on sys.path), HF's tokenizers still wins and mgen.tokenizers works
    hf, ours, mgen_file = _probe(REPO_ROOT, env)
    assert "site-packages" in hf
    # the wheel carries every package, the license and its SPDX expression, and `mgen sample` runs from its copy
    assert (target / "mgen" / "bench" / "report.py").is_file() and (target / "mgen" / "families.py").is_file()
    meta = next(target.glob("mgen-*.dist-info")) / "METADATA"
    text = meta.read_text()
    assert "License-Expression: Apache-2.0" in text and "Classifier: " in text and "Project-URL: " in text
    out = subprocess.run([sys.executable, "-m", "mgen", "sample", "--model", "maskgit-digits", "--num", "2", "--steps",
                          "2", "--no-progress", "--out", str(tmp_path / "samples")], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, **env}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "samples" / "grid.png").is_file() and (tmp_path / "samples" / "0001.png").is_file()
