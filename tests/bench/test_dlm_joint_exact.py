"""mgen bench joint-exact: the enumerated laws are the laws of the real sampler classes (path by path)."""

from __future__ import annotations

import argparse

import pytest
import torch

from mgen.bench import joint_exact as je
from mgen.models.dlm import DLMConfig, MaskedDiffusionLM
from mgen.models.joint_sampler import JointSamplerLayer
from mgen.samplers.entropy_bound import EntropyBoundSampler
from mgen.samplers.joint import JointSampler

L = 4


@pytest.fixture(scope="module")
def toy(one_thread):
    torch.manual_seed(0)
    base = MaskedDiffusionLM(DLMConfig(**je.TOY_ARCH)).eval()
    with torch.no_grad():  # sharper, position-dependent conditionals than a fresh init
        for p in base.parameters():
            if p.ndim == 2:
                p.mul_(6.0)
    layer = JointSamplerLayer(base.cfg).eval()
    torch.nn.init.ones_(layer.norm.weight)  # a layer that changes the logits
    return base, layer


def _codes(x: torch.Tensor) -> torch.Tensor:
    return (x * je.V_REAL ** torch.arange(L - 1, -1, -1)).sum(-1)


@pytest.mark.parametrize("method", ["exact", "marginal2", "adjust2", "eb", "eb+adjust"])
def test_enumerated_law_is_the_samplers_law(toy, method):
    base, layer = toy
    n = 64
    empty = torch.zeros(n, 0, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    if method in ("exact", "marginal2", "adjust2"):
        k = 1 if method == "exact" else 2
        lay = layer if method == "adjust2" else None
        s = JointSampler(gen_length=L, tokens_per_step=k)
        x = s.sample(base, empty, layer=lay, generator=g)
        law = je.enumerate_law(base, L, k=k, layer=lay)
        fwd = s.stats.full_forwards
    else:
        lay = layer if method == "eb+adjust" else None
        s = EntropyBoundSampler(gen_length=L, entropy_bound=0.6)
        x = s.sample(base, empty, generator=g, layer=lay)
        law = je.enumerate_law(base, L, gamma=0.6, layer=lay)
        fwd = s.stats.full_forwards
    assert float(law.probs.sum()) == pytest.approx(1.0, abs=1e-9)
    assert bool((x < je.V_REAL).all())
    q = law.probs[_codes(x)]
    assert torch.allclose(q.log(), s.log_q, atol=1e-6)  # each sampled string: the sampler's own path probability
    assert 1 <= law.forwards <= L and fwd >= 1


def test_distances_and_small_bench(toy, tmp_path):
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.25, 0.5, 0.25])
    d = je.distances(q, p)
    assert d["tv"] == pytest.approx(0.25) and d["kl_q_p"] == float("inf")
    assert d["kl_p_q"] == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item())
    parser = argparse.ArgumentParser()
    je.add_arguments(parser)
    args = parser.parse_args(["--length", "4", "--base-steps", "3", "--layer-steps", "2", "--trajectories", "32",
                              "--ks", "2", "--gammas", "0.5", "--out", str(tmp_path)])
    res = je.run(args)
    rows = {(r["method"], r["setting"]): r for r in res["rows"]}
    assert rows[("exact", "k=1")]["tv"] == 0.0 and rows[("marginal", "k=2")]["forwards_per_token"] == 0.5
    assert 0 < res["meta"]["layer_cost_ratio_r"] < 1
    assert (tmp_path / "joint_exact.json").exists() and (tmp_path / "joint_exact.md").exists()


def test_frontier_rows_on_a_tiny_model(toy):
    from mgen.bench.joint_frontier import run_frontier

    base, layer = toy
    prompts = torch.tensor([[1, 2], [2, 3], [1, 1], [3, 1]])  # no pad id (0): exact_log_prob hides pads
    rows = run_frontier(base, layer, prompts, gen_length=4, ks=[2], gammas=[1.0], seed=0, batch_size=2,
                        bootstrap=50)
    by = {r["method"]: r for r in rows}
    assert abs(by["exact"]["kl_q_p"]) < 1e-9 and abs(by["exact"]["kl_p_q"]) < 1e-9  # measured: replay = sampler
    assert by["marginal"]["forwards_per_token"] == 0.5 and by["adjust"]["passes_per_token"] == 0.5
    assert set(by) == {"exact", "marginal", "adjust", "eb", "eb+adjust"}
    # a method subset (the layer-free rows, run while the layer trains) measures exactly the full run's rows
    sub = run_frontier(base, layer, prompts, gen_length=4, ks=[2], gammas=[1.0], seed=0, batch_size=2,
                       bootstrap=50, methods=("marginal", "eb"))
    assert [r["method"] for r in sub] == ["marginal", "eb"]
    for r in sub:
        assert {k: v for k, v in r.items() if k != "seconds"} == {k: v for k, v in by[r["method"]].items()
                                                                  if k != "seconds"}


def test_frontier_refuses_unknown_methods_in_one_line():
    from mgen.bench.joint_frontier import add_arguments, run
    from mgen.errors import UserError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(UserError, match="--methods") as e:
        run(parser.parse_args(["--methods", "marginal,greedy", "--out", ""]))
    assert "\n" not in str(e.value)


def test_chain_toy_makes_every_neighbour_pair_dependent():
    g = torch.Generator().manual_seed(0)
    x = je.toy_data(20000, 8, 0.2, g, structure="chain")
    assert x.shape == (20000, 8) and int(x.min()) >= 0 and int(x.max()) < je.V_REAL
    same = (x[:, 1:] == x[:, :-1]).double().mean(0)
    # P(x_{i+1} = x_i) = 1 - noise + noise / V = 0.85 for every neighbour pair (uniform would give 0.25)
    assert torch.allclose(same, torch.full_like(same, 0.85), atol=0.015)
    first = torch.bincount(x[:, 0], minlength=je.V_REAL).double() / x.shape[0]
    assert torch.allclose(first, torch.full_like(first, 0.25), atol=0.015)
    with pytest.raises(ValueError, match="structure"):
        je.toy_data(4, 8, 0.2, g, structure="tree")


def test_copy_toy_is_the_default():
    a = je.toy_data(64, 8, 0.1, torch.Generator().manual_seed(3))
    b = je.toy_data(64, 8, 0.1, torch.Generator().manual_seed(3), structure="copy")
    assert torch.equal(a, b) and (a[:, 4:] == a[:, :4]).double().mean() > 0.85


def test_frontier_runs_split_by_method_merge_into_one(tmp_path):
    import json

    from mgen.bench import joint_frontier as jf
    from mgen.errors import UserError

    meta = {"model": "m", "joint_sampler": "j", "prompts": 4, "gen_length": 4, "layer_cost_ratio_r": 0.2,
            "seconds": 1.0}
    exact = {"method": "exact", "setting": "k=1", "kl_q_p": 0.0, "kl_q_p_ci": [0.0, 0.0],
             "ffe_flops_per_token": 1.0}
    a = {"meta": {**meta, "command": "a"}, "rows": [exact, {"method": "marginal", "setting": "k=2", "kl_q_p": 1.0,
                                                            "kl_q_p_ci": [0.8, 1.2], "ffe_flops_per_token": 0.5}]}
    b = {"meta": {**meta, "command": "b", "seconds": 3.0},
         "rows": [exact, {"method": "eb", "setting": "γ=8.0", "kl_q_p": 2.0, "kl_q_p_ci": [1.5, 2.5],
                   "ffe_flops_per_token": 0.4}]}
    paths = []
    for name, part in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(part))
        paths.append(str(tmp_path / f"{name}.json"))
    res = jf.merge_main(paths, str(tmp_path / "out"))
    assert [(r["method"], r["setting"]) for r in res["rows"]] == [("exact", "k=1"), ("marginal", "k=2"),
                                                                    ("eb", "γ=8.0")]
    assert res["meta"]["command"] == ["a", "b"] and res["meta"]["seconds"] == 3.0
    assert json.loads((tmp_path / "out" / "joint_frontier.json").read_text())["rows"] == res["rows"]
    b["meta"]["prompts"] = 8
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(UserError, match="prompts"):
        jf.merge_main(paths, str(tmp_path / "out2"))
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a joint-frontier result"):
        jf.merge_main([str(tmp_path / "c.json")], str(tmp_path / "out3"))
