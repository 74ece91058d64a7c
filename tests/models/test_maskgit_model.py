"""MaskGIT model: the valeoai checkpoint layout, round trips, conversion, bad weights."""

from __future__ import annotations

import torch
import pytest

from mgen.errors import UserError, WeightsError
from mgen.models.maskgit import (MaskGITConfig, MaskGITTransformer, convert_valeoai_state_dict,
                                 to_valeoai_state_dict)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


TINY = dict(grid_size=4, hidden_dim=32, depth=2, heads=4, mlp_dim=64, codebook_size=16, mask_token_id=16,
            num_classes=10, dropout=0.1)

# Key names of valeoai/Maskgit-pytorch v1 ``MaskTransformer`` (Network/transformer.py), one block.
OFFICIAL_KEYS_DEPTH1 = {
    "tok_emb.weight", "pos_emb", "bias",
    "first_layer.0.weight", "first_layer.0.bias", "first_layer.2.weight", "first_layer.2.bias",
    "first_layer.4.weight", "first_layer.4.bias", "first_layer.6.weight", "first_layer.6.bias",
    "last_layer.0.weight", "last_layer.0.bias", "last_layer.2.weight", "last_layer.2.bias",
    "last_layer.4.weight", "last_layer.4.bias",
    "transformer.layers.0.0.norm.weight", "transformer.layers.0.0.norm.bias",
    "transformer.layers.0.0.fn.mha.in_proj_weight", "transformer.layers.0.0.fn.mha.in_proj_bias",
    "transformer.layers.0.0.fn.mha.out_proj.weight", "transformer.layers.0.0.fn.mha.out_proj.bias",
    "transformer.layers.0.1.norm.weight", "transformer.layers.0.1.norm.bias",
    "transformer.layers.0.1.fn.net.0.weight", "transformer.layers.0.1.fn.net.0.bias",
    "transformer.layers.0.1.fn.net.3.weight", "transformer.layers.0.1.fn.net.3.bias",
}


def _model(**kw) -> MaskGITTransformer:
    torch.manual_seed(0)
    m = MaskGITTransformer({**TINY, **kw}).eval()
    with torch.no_grad():  # move off the init so that every tensor matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_official_key_layout_and_shapes():
    m = _model(depth=1)
    off = to_valeoai_state_dict(m.state_dict())
    assert set(off) == OFFICIAL_KEYS_DEPTH1
    v = 16 + 1 + 10 + 1  # codes + mask + classes + null class share one table
    assert off["tok_emb.weight"].shape == (v, 32)
    assert off["pos_emb"].shape == (1, 17, 32)  # 16 image tokens + class token
    assert off["bias"].shape == (17, v)
    assert off["transformer.layers.0.0.fn.mha.in_proj_weight"].shape == (96, 32)
    assert set(convert_valeoai_state_dict(off)) == set(m.state_dict())


def test_valeoai_checkpoint_loads_and_matches(tmp_path):
    m = _model()
    path = tmp_path / "MaskGIT_ImageNet_256.pth"
    torch.save({"iter": 7, "global_epoch": 1, "model_state_dict": to_valeoai_state_dict(m.state_dict()),
                "optimizer_state_dict": {}}, path)
    loaded = MaskGITTransformer.from_pretrained(path, config=TINY)
    codes = torch.randint(0, 17, (3, 4, 4))
    y = torch.tensor([1, 5, 9])
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        assert torch.equal(m(codes, y, drop), loaded(codes, y, drop))
    # DDP-prefixed keys load too
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in to_valeoai_state_dict(m.state_dict()).items()}}, path)
    again = MaskGITTransformer.from_pretrained(path, config=TINY)
    assert torch.equal(again.tok_emb.weight, m.tok_emb.weight)


def test_forward_semantics():
    m = _model()
    codes = torch.randint(0, 17, (2, 16))
    with torch.no_grad():
        out = m(codes, torch.tensor([0, 3]))
        assert out.shape == (2, 16, 16)
        # drop_label == class row num_classes of the shifted table == unconditional call
        u1 = m(codes, torch.tensor([0, 3]), torch.tensor([True, True]))
        u2 = m(codes, None)
        assert torch.equal(u1, u2)
        assert not torch.allclose(out, u1)
        # the head is tied to the token embedding
        x = torch.randn(1, 32)
    assert m.tok_emb.weight.shape[0] == 28


def test_save_pretrained_round_trip(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "mg")  # diffusers' ModelMixin layout
    assert (tmp_path / "mg" / "diffusion_pytorch_model.safetensors").exists() and (tmp_path / "mg" / "config.json").exists()
    loaded = MaskGITTransformer.from_pretrained(tmp_path / "mg")
    assert loaded.arch == m.arch
    codes = torch.randint(0, 17, (2, 16))
    with torch.no_grad():
        assert torch.equal(m(codes, torch.tensor([1, 2])), loaded(codes, torch.tensor([1, 2])))


def test_mismatched_weights_one_clear_error(tmp_path):
    m = _model()
    path = tmp_path / "ck.pth"
    torch.save({"model_state_dict": to_valeoai_state_dict(m.state_dict())}, path)
    with pytest.raises(WeightsError, match="do not fit"):
        MaskGITTransformer.from_pretrained(path, config={**TINY, "hidden_dim": 64})
    torch.save({"something": 1}, path)
    with pytest.raises(WeightsError, match="no MaskGIT weights"):
        MaskGITTransformer.from_pretrained(path, config=TINY)


def test_config_validation():
    with pytest.raises(UserError, match="unknown MaskGIT arch keys"):
        MaskGITConfig.from_mapping({"depthh": 3})
    with pytest.raises(UserError, match="divisible"):
        MaskGITConfig.from_mapping({"hidden_dim": 30, "heads": 4})
    with pytest.raises(UserError, match="expects 16 tokens"):
        _model()(torch.zeros(1, 9, dtype=torch.long))
    # the registry preset is the valeoai "base" ImageNet model
    from mgen import registry

    c = MaskGITConfig.from_mapping(registry.get("maskgit").arch)
    assert (c.grid_size, c.hidden_dim, c.depth, c.heads, c.mlp_dim, c.codebook_size, c.mask_token_id) == (16, 768, 24, 16, 3072, 1024, 1024)


def test_mgen_convert_maskgit(tmp_path, run_mgen):
    m = _model()
    src = tmp_path / "MaskGIT.pth"
    torch.save({"model_state_dict": to_valeoai_state_dict(m.state_dict()), "iter": 1}, src)
    args = [f"--opt={k}={v}" for k, v in TINY.items()]
    r = run_mgen("convert", "maskgit", str(src), str(tmp_path / "out"), "--opt", "config=null", *args)
    assert r.returncode == 0, r.stderr
    loaded = MaskGITTransformer.from_pretrained(tmp_path / "out")
    assert torch.equal(loaded.bias, m.bias)
    r = run_mgen("convert", "maskgit", str(tmp_path / "missing.pth"), str(tmp_path / "o2"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
