"""dlm: the masked diffusion LM itself — shapes, padding invariance, loss, training + resume, weights round trip."""

from __future__ import annotations

import torch

from mgen.errors import UserError, WeightsError
from mgen.models.dlm import (DLMConfig, DLMTask, MaskedDiffusionLM, load_dlm_file, masked_diffusion_loss, nll_bound,
                             save_dlm)

import pytest

TINY = dict(vocab_size=40, dim=32, depth=2, num_heads=2, mlp_hidden=48, seq_len=16)


def tiny(seed: int = 0) -> MaskedDiffusionLM:
    torch.manual_seed(seed)
    return MaskedDiffusionLM(DLMConfig.from_mapping(TINY)).eval()


def test_forward_shapes_and_left_padding_invariance():
    m = tiny()
    ids = torch.randint(3, 40, (1, 10))
    out = m(ids)
    assert out.shape == (1, 10, 40)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    attn = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], 1).long()
    out_p = m(padded, attention_mask=attn)[:, 3:]
    torch.testing.assert_close(out_p, out, atol=1e-5, rtol=1e-5)
    # the model is bidirectional: changing the last token changes the first position's logits
    ids2 = ids.clone()
    ids2[0, -1] = (ids2[0, -1] + 1 - 3) % 37 + 3
    assert not torch.allclose(m(ids2)[0, 0], out[0, 0])


def test_bad_arch_is_user_error():
    with pytest.raises(UserError):
        DLMConfig.from_mapping({**TINY, "bogus": 1})
    with pytest.raises(UserError):
        DLMConfig.from_mapping({**TINY, "mask_id": 99})


def test_loss_is_elbo_weighted_and_deterministic():
    m = tiny()
    ids = torch.randint(3, 40, (4, 16))
    l1 = masked_diffusion_loss(m, ids, 2, torch.Generator().manual_seed(1))
    l2 = masked_diffusion_loss(m, ids, 2, torch.Generator().manual_seed(1))
    assert torch.equal(l1, l2) and l1 > 0
    # at t = 1 every token is masked and the weight is 1: the loss is the plain mean cross-entropy
    t1 = masked_diffusion_loss(m, ids, 2, torch.Generator().manual_seed(1), eps=0.0, t=torch.ones(4))
    logits = m(torch.full_like(ids, 2))
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), ids.reshape(-1))
    torch.testing.assert_close(t1, ce)


def test_training_loss_falls_and_resumes(tmp_path):
    from mgen.train.trainer import TrainConfig, Trainer

    # a learnable language: each window repeats one random token pattern of period 4
    g = torch.Generator().manual_seed(0)
    base = torch.randint(3, 40, (64, 4), generator=g)
    data = base.repeat(1, 4)
    cfg = dict(lr=5e-3, batch_size=16, max_steps=30, log_every=10, checkpoint_every=15, progress=False, seed=0)

    def make(out):
        torch.manual_seed(0)
        return Trainer(DLMTask(tiny()), [data], TrainConfig.from_mapping(cfg, out_dir=str(out)))

    tr = make(tmp_path / "a")
    with torch.no_grad():
        first = float(masked_diffusion_loss(tr.unwrapped, data, 2, torch.Generator().manual_seed(5)))
    tr.train(stop_after=15)
    assert tr.step == 15
    tr2 = make(tmp_path / "a")
    tr2.train(resume=True)
    assert tr2.step == 30
    with torch.no_grad():
        last = float(masked_diffusion_loss(tr2.unwrapped, data, 2, torch.Generator().manual_seed(5)))
    assert last < first - 0.5
    full = make(tmp_path / "b")
    full.train()
    for (k, a), (_, b) in zip(full.unwrapped.state_dict().items(), tr2.unwrapped.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_weights_round_trip_and_nll_bound(tmp_path):
    m = tiny()
    path = tmp_path / "m.safetensors"
    save_dlm(m, str(path), dtype=torch.float32)
    m2 = load_dlm_file(str(path))
    ids = torch.randint(3, 40, (2, 12))
    torch.testing.assert_close(m2(ids), m(ids))
    assert m2.fingerprint() == m.fingerprint()
    nll = nll_bound(m2, torch.randint(3, 40, (6, 16)), 2, torch.Generator().manual_seed(0), samples_per_window=2)
    assert 0 < nll < 20
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(WeightsError):
        load_dlm_file(str(tmp_path / "bad.safetensors"))
