"""Shared test set-up: offline, single-threaded, deterministic."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

# The tests mirror the source tree (tests/models, tests/samplers, …); shared helper modules and tests that reuse
# another test module's tiny models import them by module name, so every test folder is on sys.path.
_TESTS = Path(__file__).resolve().parent
for _d in [_TESTS, *sorted(p for p in _TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))]:
    if str(_d) not in sys.path:
        sys.path.insert(0, str(_d))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test looks for official weights in an empty MGEN_HOME, never in the user's cache."""
    monkeypatch.setenv("MGEN_HOME", str(tmp_path_factory.mktemp("mgen_home")))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the tiny
    models run slower with more threads on a shared 2-core machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def run_mgen():
    """Run the CLI in a subprocess: returns CompletedProcess with text stdout/stderr."""
    import subprocess

    def run(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None, timeout: float = 300):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([sys.executable, "-m", "mgen", *args], capture_output=True, text=True,
                              cwd=cwd or REPO_ROOT, env=full_env, timeout=timeout)

    return run
