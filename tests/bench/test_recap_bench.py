"""``mgen.bench.recap`` (``mgen bench recap``): rows, FLOP ratios and the report, on the small digits configs."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from mgen.bench import recap
from mgen.errors import UserError
from mgen.hub import package_weights_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    recap.add_arguments(p)
    return p.parse_args(list(argv))


def test_random_weights_rows_and_report(tmp_path):
    res = recap.run(_args("--model", "maskgit-digits", "--random-weights", "--steps", "4", "8", "--batch-size", "2",
                          "--repeats", "1", "--out", str(tmp_path)))
    rows = {(r["K"], r["sampler"]): r for r in res["rows"]}
    assert set(rows) == {(4, "full"), (4, "recap"), (8, "full"), (8, "recap")}
    assert rows[(8, "recap")]["full_evals"] + rows[(8, "recap")]["cheap_evals"] == 8
    assert rows[(8, "recap")]["cheap_evals"] == 2  # K/2 full-only steps, then (full, cheap) cycles
    assert rows[(8, "full")]["flops_ratio"] == 1.0 and rows[(8, "recap")]["flops_ratio"] > 1.0
    stem = tmp_path / "recap-maskgit-digits-random"
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert saved["rows"] == res["rows"] and saved["meta"]["random_weights"] is True
    assert "| K | sampler |" in stem.with_suffix(".md").read_text()


@pytest.mark.parametrize("argv,needle", [
    (["--model", "dit-digits", "--random-weights"], "K/V cache"),
    (["--model", "enat-digits", "--random-weights", "--steps", "2"], "K/V cache"),
    (["--model", "maskgit-digits", "--random-weights", "--steps", "4", "--pre-full-steps", "5"], "exceeds"),
    (["--model", "maskgit-digits", "--random-weights", "--steps", "0"], "positive"),
    (["--model", "maskgit-digits", "--random-weights", "--cache-steps", "-1"], "cache-steps"),
])
def test_bad_input_is_one_user_error(argv, needle, tmp_path):
    with pytest.raises(UserError, match=needle):
        recap.run(_args(*argv, "--batch-size", "1", "--repeats", "1", "--out", str(tmp_path)))


def test_quality_columns_on_the_shipped_model(tmp_path):
    if not (package_weights_dir() / "maskgit-digits.safetensors").exists():
        pytest.skip("maskgit-digits weights not shipped in this checkout")
    res = recap.run(_args("--model", "maskgit-digits", "--steps", "4", "--batch-size", "2", "--repeats", "1",
                          "--quality-samples", "10", "--out", str(tmp_path)))
    for r in res["rows"]:
        assert 0.0 <= r["digits_accuracy"] <= 1.0 and r["digits_fid"] >= 0 and r["quality_samples"] == 10


def test_callback_reaches_the_base_sampler_through_recap():
    """Pipelines pass ``callback=`` when the sampler's ``sample`` names it: ReCAP does, and forwards it."""
    import inspect

    from mgen.models.maskgit import MaskGITTransformer
    from mgen.samplers.maskgit import MaskGITSampler
    from mgen.samplers.recap import ReCAP

    torch.manual_seed(0)
    m = MaskGITTransformer(grid_size=4, hidden_dim=32, depth=1, heads=4, mlp_dim=64, codebook_size=16,
                           mask_token_id=16, num_classes=10).eval()
    s = ReCAP(MaskGITSampler(num_steps=5), 1, 1)
    assert "callback" in inspect.signature(s.sample).parameters and s.total_steps == 5
    steps = []
    s.sample(m, torch.tensor([1]), generator=torch.Generator().manual_seed(0), callback=lambda i, t, st: steps.append(i))
    assert steps == [0, 1, 2, 3, 4] and s.last_stats["cheap"] == 2
