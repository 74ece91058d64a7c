"""The ENAT-vs-MaskGIT benchmark (``mgen.bench.enat``), the shared FLOP counter (``mgen.bench.flops``) and
`mgen convert enat`."""

from __future__ import annotations

import json

import pytest
import torch

from mgen.models.enat import ENAT


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_flops_rows_tiny(tmp_path):
    from mgen.bench.enat import run_benchmark, write_results

    r = run_benchmark("tiny", "cpu", batch_size=2, num_steps=4)
    rows = {x["name"]: x for x in r["rows"]}
    assert set(rows) == {"maskgit", "enat", "enat-no-reuse"}
    # reuse only removes work: the critical-token encoder sees fewer rows than the full one
    assert 0 < rows["enat"]["flops_per_image"] < rows["enat-no-reuse"]["flops_per_image"]
    assert rows["maskgit"]["flops_vs_maskgit"] == 1.0
    j, m = write_results(r, tmp_path)
    assert "| enat |" in m.read_text() and j.exists()
    assert json.loads(j.read_text())["rows"][0]["name"] == "maskgit"


def test_bench_enat_run_bf16_writes_the_report(tmp_path):
    import argparse

    from mgen.bench import enat

    p = argparse.ArgumentParser()
    enat.add_arguments(p)
    args = p.parse_args(["--size", "tiny", "--steps", "3", "--batch-size", "2", "--dtype", "bf16",
                         "--out", str(tmp_path)])
    res = enat.run(args)
    assert res["meta"]["dtype"] == "bfloat16" and len(res["rows"]) == 3
    assert (tmp_path / "enat_vs_maskgit.md").exists() and (tmp_path / "enat_vs_maskgit.json").exists()
    from mgen.errors import UserError

    with pytest.raises(UserError, match="positive"):
        enat.run(p.parse_args(["--size", "tiny", "--steps", "0", "--out", str(tmp_path)]))


def test_count_flops_matches_matmul():
    from mgen.bench.flops import count_call_flops, count_flops

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    lin = torch.nn.Linear(16, 4)
    x = torch.randn(8, 16)

    def both():
        lin(x)
        _ = a @ b  # not inside the counted method

    assert count_call_flops(lin, "forward", both) == 2 * 8 * 16 * 4
    assert "forward" not in vars(lin)  # the instance is restored


def test_mgen_convert_enat(tmp_path, run_mgen):
    torch.manual_seed(0)
    arch = dict(grid_size=4, hidden_dim=32, enc_depth=1, dec_depth=1, heads=4, codebook_size=16, num_classes=10)
    m = ENAT(arch)
    torch.save(m.state_dict(), tmp_path / "nnet_ema.pth")
    opts = [f"--opt={k}={v}" for k, v in arch.items()]
    r = run_mgen("convert", "enat", str(tmp_path / "nnet_ema.pth"), str(tmp_path / "out"), "--opt", "config=null", *opts)
    assert r.returncode == 0, r.stderr
    loaded = ENAT.from_pretrained(tmp_path / "out")
    assert torch.equal(loaded.mlm_layer.bias, m.mlm_layer.bias)
