"""MaskGIT / ENAT decoding rules of the official code (valeoai v1 sampler, ENAT NATSchedule) and the
issue's bad-input contract. Tiny random models; no official code is imported."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import UserError, WeightsError
from mgen.models.maskgit import MaskGITTransformer, to_valeoai_state_dict
from mgen.samplers.mask_schedules import (SCHEDULES, check_schedule, floor_mask_counts, mask_counts,
                                          valeoai_mask_counts)
from mgen.samplers.maskgit import MaskGITSampler

TINY = dict(grid_size=4, hidden_dim=32, depth=2, heads=4, mlp_dim=64, codebook_size=16, mask_token_id=16, num_classes=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def model() -> MaskGITTransformer:
    torch.manual_seed(0)
    m = MaskGITTransformer(TINY).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
        m.bias[:, 16] += 3.0  # make the [MASK] output column likely, to exercise the valeoai clamp
    return m


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_rule_hits_zero_at_the_last_step(name):
    for steps in range(1, 65):
        for rule, n in ((mask_counts, 256), (floor_mask_counts, 256), (floor_mask_counts, 16), (valeoai_mask_counts, 256)):
            c = rule(name, steps, n)
            assert len(c) == steps and c[-1] == 0
            assert all(b <= a for a, b in zip([n] + c, c))  # never more masked than before
        # valeoai rounding on the ImageNet grid: every step still reveals something (no early finish)
        v = valeoai_mask_counts(name, steps, 256)
        assert all(b < a for a, b in zip([256] + v, v))


def test_valeoai_counts_formula():
    # adap_sche(8, "arccos") on 16x16: per-step reveals round(256 w/sum w), the last takes the rest
    assert valeoai_mask_counts("arccos", 8, 256) == [255, 237, 211, 179, 141, 98, 50, 0]
    assert valeoai_mask_counts("linear", 1, 16) == [0]
    assert check_schedule("root") == "sqrt"


def test_mask_logit_column_is_the_official_width(model):
    codes = torch.randint(0, 17, (2, 4, 4))
    y = torch.tensor([1, 2])
    with torch.no_grad():
        full = model(codes, y, None, mask_logit=True)
        assert full.shape == (2, 16, 17)
        assert torch.equal(full[..., :16], model(codes, y, None))


@pytest.mark.parametrize("steps,cfg", [(8, 3.0), (5, 0.0), (16, 1.0), (1, 2.0)])
def test_valeoai_mode_fixed_tokens_stay_and_batch_independent(model, steps, cfg):
    s = MaskGITSampler(num_steps=steps, schedule="arccos", cfg=cfg, reference="valeoai")
    labels = torch.tensor([0, 9, 2, 5])
    out, hist = s.sample(model, labels, generator=_g(3), return_history=True)
    assert out.shape == (4, 4, 4) and int(out.max()) <= 15 and int(out.min()) >= 0  # [MASK] draws clamped
    counts = s.mask_counts(16)
    masked_prev = torch.ones(4, 16, dtype=torch.bool)
    prev = torch.full((4, 16), 16)
    for t, h in enumerate(hist):
        h = h.reshape(4, 16)
        # a position decoded earlier keeps its code (even a drawn [MASK] id) — never re-masked
        assert torch.equal(h[~masked_prev], prev[~masked_prev])
        masked_now = h == 16
        assert bool((masked_now.sum(1) >= counts[t]).all())
        masked_prev, prev = masked_prev & masked_now, h
    assert torch.equal(s.sample(model, labels[:1], generator=_g(3)), out[:1])
    assert torch.equal(s.sample(model, labels, generator=_g(3)), out)


def test_jax_mode_unchanged_counts(model):
    s = MaskGITSampler(num_steps=8, schedule="arccos", reference="jax")
    _, hist = s.sample(model, torch.tensor([1, 2]), generator=_g(1), return_history=True)
    assert [int((h[0] == 16).sum()) for h in hist] == mask_counts("arccos", 8, 16)
    with pytest.raises(UserError, match="unknown MaskGIT reference"):
        MaskGITSampler(reference="nope")


def test_v2_checkpoint_refused_clearly(tmp_path):
    state = {"cls_emb.weight": torch.zeros(1001, 8), "tok_emb.weight": torch.zeros(1025, 8),
             "transformer.layers.0.attn.wq.weight": torch.zeros(8, 8)}
    torch.save({"model_state_dict": state}, tmp_path / "v2.pth")
    with pytest.raises(WeightsError, match="v2.0"):
        MaskGITTransformer.from_pretrained(tmp_path / "v2.pth", config=TINY)


def test_v1_round_trip_with_official_extras(model, tmp_path):
    p = tmp_path / "MaskGIT_ImageNet_256.pth"
    torch.save({"iter": 1, "global_epoch": 0, "model_state_dict": to_valeoai_state_dict(model.state_dict()),
                "optimizer_state_dict": {}}, p)
    loaded = MaskGITTransformer.from_pretrained(p, config=TINY)
    codes = torch.randint(0, 17, (2, 4, 4))
    with torch.no_grad():
        assert torch.equal(loaded(codes, torch.tensor([3, 4]), torch.tensor([False, True]), mask_logit=True),
                           model(codes, torch.tensor([3, 4]), torch.tensor([False, True]), mask_logit=True))


@pytest.mark.parametrize("model_name,args,needle", [
    ("maskgit-digits", ["--steps", "0"], "steps"),
    ("maskgit-digits", ["--class", "12"], "class"),
    ("enat-digits", ["--steps", "-3"], "steps"),
    ("enat-digits", ["--class", "-1"], "class"),
    ("maskgit", ["--weights", "/nonexistent/MaskGIT_ImageNet_256.pth"], ""),
])
def test_cli_bad_input_one_line_exit_2(capsys, tmp_path, model_name, args, needle):
    from mgen.cli import main  # in-process: the same entry point as the `mgen` script, without a subprocess

    rc = main(["sample", "--model", model_name, "--num", "2", "--out", str(tmp_path / "o"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert needle.lower() in lines[0].lower()
