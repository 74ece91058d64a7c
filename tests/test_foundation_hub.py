"""Weight resolution and the safe loader."""

from __future__ import annotations

import argparse
import datetime

import pytest
import torch

from mgen import hub
from mgen.errors import WeightsError


def test_safetensors_roundtrip(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    p = hub.save_safetensors(state, tmp_path / "w.safetensors")
    out = hub.load_checkpoint(p)
    assert set(out) == {"a", "b"} and torch.equal(out["a"], state["a"])
    assert not list(tmp_path.glob(".tmp-*")), "atomic write left a temp file"


def test_official_style_pth_with_namespace_is_accepted(tmp_path):
    args = argparse.Namespace(model="mar_base", diffloss_d=6, cfg=2.9)
    ckpt = {"model": {"w": torch.ones(2)}, "model_ema": {"w": torch.zeros(2)}, "epoch": 399, "args": args}
    p = tmp_path / "checkpoint-last.pth"
    torch.save(ckpt, p)
    out = hub.load_checkpoint(p)
    assert out["args"].model == "mar_base" and out["epoch"] == 399
    assert hub.iter_state_dicts(out, ["model_ema", "model"])["w"].sum() == 0


def test_numpy_scalar_in_checkpoint_is_accepted(tmp_path):
    import numpy as np

    p = tmp_path / "np.pt"
    torch.save({"model": {"w": torch.ones(1)}, "best": np.float64(1.5)}, p)
    assert float(hub.load_checkpoint(p)["best"]) == 1.5


def test_foreign_global_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "when": datetime.date(2024, 1, 1)}, p)
    with pytest.raises(WeightsError, match=r"refused to load.*datetime"):
        hub.load_checkpoint(p)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_refused(tmp_path, suffix):
    p = tmp_path / f"w{suffix}"
    state = {"w": torch.randn(64, 64)}
    if suffix == ".pth":
        torch.save({"model": state}, p)
    else:
        hub.save_safetensors(state, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"corrupt or truncated.*" + p.name.replace(".", r"\.") + "|" + p.name):
        hub.load_checkpoint(p)


def test_unsupported_and_missing(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        hub.load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported weights format"):
        hub.load_checkpoint(tmp_path / "w.h5")


def test_resolve_local_path(tmp_path):
    p = tmp_path / "my.safetensors"
    hub.save_safetensors({"x": torch.ones(1)}, p)
    r = hub.resolve(str(p))
    assert r.entry is None and r.path == p
    r = hub.resolve("mar-b", weights=p)
    assert r.entry.name == "mar-b" and r.path == p
    with pytest.raises(WeightsError, match="no such file"):
        hub.resolve(str(tmp_path / "missing.pth"))


def test_resolve_from_mgen_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MGEN_HOME", str(tmp_path))
    (tmp_path / "kl16").mkdir()
    (tmp_path / "kl16" / "kl16.ckpt").write_bytes(b"")
    assert hub.resolve("kl16").path == tmp_path / "kl16" / "kl16.ckpt"


def test_missing_weights_message_names_file_and_remedy():
    with pytest.raises(WeightsError) as e:
        hub.resolve("mar-b")
    msg = str(e.value)
    assert "checkpoint-last.pth" in msg and "--weights PATH" in msg and "\n" not in msg


def test_missing_weights_cli_exit_2(run_mgen):
    out = run_mgen("info", "mar-b")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint-last.pth" in lines[0] and "Traceback" not in out.stderr


def test_resolve_from_hf_cache(tmp_path, monkeypatch):
    """A file in the standard HF cache layout (models--org--name/snapshots/REV/...) is found offline."""
    repo_dir = tmp_path / "models--stabilityai--sd-vae-ft-ema"
    snap = repo_dir / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("abc123")
    hub.save_safetensors({"w": torch.ones(1)}, snap / "diffusion_pytorch_model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    r = hub.resolve("sd-vae-ft-ema")
    assert r.path == snap / "diffusion_pytorch_model.safetensors"
