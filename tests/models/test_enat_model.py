"""ENAT: official layout, feature reuse equivalence, decoding determinism, training step, bad input."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import UserError, WeightsError
from mgen.models.enat import ENAT, ENATConfig, ENATState, ENATTask
from mgen.samplers.enat import ENATSampler
from mgen.samplers.mask_schedules import floor_mask_counts, mask_counts


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TINY = dict(grid_size=4, hidden_dim=32, enc_depth=2, dec_depth=1, heads=4, codebook_size=16, num_classes=10)


@pytest.fixture(scope="module")
def model() -> ENAT:
    torch.manual_seed(0)
    m = ENAT(TINY).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_official_key_names(model):
    keys = set(model.state_dict())
    # LeapLabTHU/ENAT libs/models.py names (BertEmbeddings, LabelEmbedder, multiway kv, MlmLayer)
    for k in ("x_embedder.word_embeddings.weight", "x_embedder.position_embeddings.weight",
              "x_embedder.LayerNorm.weight", "y_embedder.embedding_table.weight", "prev_embedder.fc1.weight",
              "prev_proj.norm.weight", "prev_proj.mlp.fc2.bias", "blocks.0.attn.q.weight",
              "blocks.0.attn.kv.A.weight", "blocks.0.attn.kv.B.bias", "blocks.0.attn.proj.weight",
              "blocks.2.mlp.fc1.weight", "blocks.2.adaLN_modulation.1.weight", "norm.weight",
              "mlm_layer.fc.weight", "mlm_layer.ln.bias", "mlm_layer.bias"):
        assert k in keys, k
    assert model.state_dict()["blocks.0.adaLN_modulation.1.weight"].shape == (8 * 32, 32)
    assert model.state_dict()["y_embedder.embedding_table.weight"].shape == (11, 32)
    assert model.state_dict()["mlm_layer.bias"].shape == (1, 1, 17)


def test_official_state_dict_round_trip(model, tmp_path):
    path = tmp_path / "nnet_ema.pth"
    torch.save(model.state_dict(), path)  # the official checkpoint is a plain state dict
    loaded = ENAT.from_pretrained(path, config=TINY)
    ids = torch.randint(0, 16, (2, 16))
    ids[:, :5] = 16
    with torch.no_grad():
        assert torch.equal(model(ids, torch.tensor([1, 2])), loaded(ids, torch.tensor([1, 2])))
    loaded.save_pretrained(tmp_path / "f")
    again = ENAT.from_pretrained(tmp_path / "f")
    assert again.arch == loaded.arch
    with pytest.raises(WeightsError, match="do not fit"):
        ENAT.from_pretrained(path, config={**TINY, "enc_depth": 3})


def test_reuse_with_nothing_reused_equals_recompute(model):
    torch.manual_seed(1)
    ids = torch.randint(0, 16, (3, 16))
    ids[:, torch.randperm(16)[:7]] = 16
    labels = torch.tensor([0, 4, 9])
    with torch.no_grad():
        full = model(ids, labels)
        nothing = ENATState(torch.ones(3, 16, dtype=torch.bool), torch.randn(3, 16, 32))
        reused = model(ids, labels, prev=nothing)
    assert torch.allclose(full, reused, atol=1e-6)


def test_reuse_encodes_only_critical_tokens(model):
    torch.manual_seed(2)
    codes = torch.randint(0, 16, (2, 16))
    ids0 = codes.clone(); ids0[:, :12] = 16
    ids1 = codes.clone(); ids1[:, :9] = 16  # tokens 9, 10, 11 are the newly decoded (critical) ones
    seen = []
    hook = model.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    try:
        with torch.no_grad():
            _, s0 = model(ids0, torch.tensor([1, 2]), return_state=True)
            l1 = model(ids1, torch.tensor([1, 2]), prev=s0)
            l1_full = model(ids1, torch.tensor([1, 2]))
    finally:
        hook.remove()
    assert seen == [4, 3, 7]  # encoder rows: 4 visible; then only the 3 critical; recompute: all 7
    assert not torch.allclose(l1, l1_full)  # reuse is a different (cheaper) computation
    with pytest.raises(UserError, match="masked now was visible"):
        model(ids0, torch.tensor([1, 2]), prev=ENATState(ids1 == 16, s0.feat))


def test_sampler_determinism_and_counts(model):
    s = ENATSampler(num_steps=5, cfg=2.0)
    labels = torch.tensor([3, 1, 4])
    a, hist = s.sample(model, labels, generator=_g(5), return_history=True)
    assert torch.equal(s.sample(model, labels[:1], generator=_g(5)), a[:1])
    assert torch.equal(s.sample(model, labels, generator=_g(5)), a)
    counts = floor_mask_counts("cosine", 5, 16)
    for t, h in enumerate(hist):
        assert ((h == 16).sum(dim=(1, 2)) == counts[t]).all()
        if t:
            fixed = hist[t - 1] != 16
            assert torch.equal(h[fixed], hist[t - 1][fixed])
    assert not (a == 16).any()
    no_reuse = ENATSampler(num_steps=5, cfg=2.0, reuse=False).sample(model, labels, generator=_g(5))
    assert no_reuse.shape == a.shape
    u = ENATSampler(num_steps=3).sample(model, None, batch_size=2, generator=_g(1))
    assert u.shape == (2, 4, 4)


def test_training_step_both_paths(model):
    torch.manual_seed(0)
    m = ENAT({**TINY, "reuse_prob": 1.0}).train()
    with torch.no_grad():  # leave the zero adaLN init, which blocks every gradient into the context path
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    codes = torch.randint(0, 16, (4, 4, 4))
    labels = torch.tensor([0, 1, 2, 3])
    loss = ENATTask(m).loss(m, (codes, labels), _g(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert m.prev_proj.mlp.fc1.weight.grad is not None and m.prev_proj.mlp.fc1.weight.grad.abs().sum() > 0
    m2 = ENAT({**TINY, "reuse_prob": 0.0}).train()
    l2 = ENATTask(m2).loss(m2, (codes, labels), _g(0))
    l2.backward()
    assert m2.prev_proj.mlp.fc1.weight.grad is None


def test_bad_input(model):
    with pytest.raises(UserError, match="unknown ENAT arch keys"):
        ENATConfig.from_mapping({"width": 3})
    with pytest.raises(UserError, match="unknown ENAT sampler settings"):
        ENATSampler.from_mapping({"temp": 1})
    with pytest.raises(UserError, match="same number of masked tokens"):
        ids = torch.randint(0, 16, (2, 16)); ids[0, :3] = 16
        model(ids, torch.tensor([1, 2]))
    with pytest.raises(UserError, match=r"labels must lie"):
        ENATSampler(num_steps=2).sample(model, torch.tensor([-1]), generator=_g())
    from mgen import registry

    c = ENATConfig.from_mapping(registry.get("enat-l").arch)
    assert (c.hidden_dim, c.enc_depth, c.dec_depth, c.heads) == (1024, 22, 2, 16)
    sc = registry.get("enat-l").sampler
    assert (sc["num_steps"], sc["cfg"], sc["mask_temp"], sc["samp_temp"]) == (8, 2.5, 1.5, 6.0)
