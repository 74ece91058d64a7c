"""ReCAP's K/V cache (mgen.nn.KVCache): a cheap step over all positions equals a full step, cached K/V
equal recomputed K/V where the inputs did not change, and every attention backend agrees."""

from __future__ import annotations

import pytest
import torch

from mgen.models.mar import MAR
from mgen.models.maskgit import MaskGITTransformer
from mgen.nn import Attention, KVCache, available_backends

MG = dict(grid_size=4, hidden_dim=32, depth=2, heads=4, mlp_dim=64, codebook_size=16, mask_token_id=16,
          num_classes=10, dropout=0.0)
MAR_TINY = dict(img_size=16, vae_stride=4, patch_size=1, vae_embed_dim=4, encoder_embed_dim=32, encoder_depth=2,
                encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2, class_num=5,
                buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps=10, attn_dropout=0.0, proj_dropout=0.0)


class SpyCache(KVCache):
    """Keeps what each layer attended over (the merged K/V) in reuse mode."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.merged: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def combine(self, layer_id, k, v):
        out = super().combine(layer_id, k, v)
        if self.mode == "reuse":
            self.merged[layer_id] = out
        return out


def _maskgit(seed: int = 0) -> MaskGITTransformer:
    torch.manual_seed(seed)
    return MaskGITTransformer(MG).eval()


def _mar(seed: int = 0) -> MAR:
    torch.manual_seed(seed)
    m = MAR(**MAR_TINY).eval()
    return m


def _codes(b: int, masked_frac: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (b, 16), generator=g)
    return codes.masked_fill(torch.rand(b, 16, generator=g) < masked_frac, 16)


@pytest.fixture(params=available_backends())
def backend(request, monkeypatch):
    monkeypatch.setenv("MGEN_ATTN", request.param)
    return request.param


@torch.no_grad()
def test_maskgit_cheap_step_over_all_positions_equals_full_step(backend):
    m = _maskgit()
    b = 3
    labels = torch.tensor([1, 4, 7])
    before = torch.full((b, 16), 16)
    after = _codes(b, 0.5, 1)
    cache = KVCache(mode="record")
    m(before, labels, cache=cache)
    cache.mode, cache.group = "reuse", torch.arange(16).flip(0).expand(b, 16)  # any order of all positions
    cheap = m(after, labels, cache=cache)
    full = m(after, labels)
    assert torch.allclose(cheap, full.flip(1), atol=1e-5, rtol=0)


@torch.no_grad()
def test_mar_cheap_step_over_all_positions_equals_full_step(backend):
    m = _mar()
    b, L = 2, m.seq_len
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(b, L, m.token_embed_dim, generator=g)
    labels = torch.tensor([1, 3])
    rank = torch.stack([torch.randperm(L, generator=g) for _ in range(b)])
    cache = KVCache(mode="record", recompute_extra=True)
    m.condition(tokens, rank < 12, labels, cache=cache)  # full step: 12 of 16 masked
    cache.mode, cache.group = "reuse", torch.arange(L).expand(b, L)
    now = rank < 6  # six more tokens decoded since
    cheap = m.condition(tokens, now, labels, cache=cache)
    full = m.condition(tokens, now, labels)
    assert torch.allclose(cheap, full, atol=1e-5, rtol=0)
    # classifier-free guidance: doubled batch with the unconditional branch
    drop = torch.tensor([False, False, True, True])
    cache = KVCache(mode="record", recompute_extra=True)
    m.condition(torch.cat([tokens, tokens]), torch.cat([rank < 12] * 2), torch.cat([labels, labels]), drop, cache=cache)
    cache.mode, cache.group = "reuse", torch.arange(L).expand(2 * b, L)
    cheap = m.condition(torch.cat([tokens, tokens]), torch.cat([now, now]), torch.cat([labels, labels]), drop, cache=cache)
    full = m.condition(torch.cat([tokens, tokens]), torch.cat([now, now]), torch.cat([labels, labels]), drop)
    assert torch.allclose(cheap, full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_maskgit_cached_kv_equal_recomputed_kv_for_unchanged_positions(backend):
    m = _maskgit()
    b = 2
    labels = torch.tensor([2, 5])
    before = _codes(b, 0.8, 3)
    group = torch.tensor([[0, 5, 9], [1, 2, 15]])
    after = before.clone()
    after.scatter_(1, group, torch.tensor([[3, 4, 5], [6, 7, 8]]))  # only the group's inputs change
    rec = KVCache(mode="record")
    m(before, labels, cache=rec)
    spy = SpyCache(mode="record")
    m(after, labels, cache=spy)  # full recomputation on the new input
    fresh = dict(spy.keys)
    spy.keys = dict(rec.keys)
    spy.mode, spy.group = "reuse", group
    m(after, labels, cache=spy)
    rows = torch.cat([group, torch.full((b, 1), 16)], 1)
    unchanged = torch.ones(b, 17, dtype=torch.bool).scatter(1, rows, False)
    first = m.blocks[0].attn.layer_id
    for lid, (k_rec, v_rec) in rec.keys.items():
        k_mix, v_mix = spy.merged[lid]
        # rows outside the group attend through exactly what the full step recorded
        assert torch.equal(k_mix[unchanged.unsqueeze(1).expand_as(k_mix[..., 0])], k_rec[unchanged.unsqueeze(1).expand_as(k_rec[..., 0])])
        assert torch.equal(v_mix.transpose(1, 2)[unchanged], v_rec.transpose(1, 2)[unchanged])
    # in the first layer the inputs of unchanged positions are identical, so the cache equals a recomputation
    # and the cheap step's merged K/V equal the full recomputation's everywhere
    k_f, v_f = fresh[first]
    k_r, v_r = rec.keys[first]
    assert torch.allclose(k_f.transpose(1, 2)[unchanged], k_r.transpose(1, 2)[unchanged], atol=1e-6)
    assert torch.allclose(spy.merged[first][0], k_f, atol=1e-6)
    assert torch.allclose(spy.merged[first][1], v_f, atol=1e-6)


@torch.no_grad()
def test_attention_cache_overwrite_and_append(backend):
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(2, 7, 16)
    rec = KVCache(mode="record")
    full = attn(x, cache=rec)
    # overwrite: recompute rows 1 and 4 only
    pos = torch.tensor([[1, 4], [4, 1]])
    part = attn(torch.gather(x, 1, pos[..., None].expand(-1, -1, 16)), cache=KVCache(mode="reuse", positions=pos, keys=rec.keys))
    assert torch.allclose(part, torch.gather(full, 1, pos[..., None].expand(-1, -1, 16)), atol=1e-6)
    # append: rows 5, 6 did not exist when the cache was recorded over rows 0..4
    rec5 = KVCache(mode="record")
    attn(x[:, :5], cache=rec5)
    new = attn(x[:, 5:], cache=KVCache(mode="reuse", append=True, keys=rec5.keys))
    assert torch.allclose(new, full[:, 5:], atol=1e-6)
    # overwrite row 2 and append rows 5, 6 in one call
    rows = torch.tensor([[2, 5, 6], [2, 5, 6]])
    mixed = attn(torch.gather(x, 1, rows[..., None].expand(-1, -1, 16)),
                 cache=KVCache(mode="reuse", append=True, positions=rows[:, :1], keys=rec5.keys))
    assert torch.allclose(mixed, full[:, [2, 5, 6]], atol=1e-6)


@torch.no_grad()
def test_backends_agree_on_cheap_steps(monkeypatch):
    m = _maskgit()
    labels = torch.tensor([3, 3])
    group = torch.tensor([[0, 1, 2, 7], [8, 9, 3, 4]])
    outs = []
    for name in available_backends():
        monkeypatch.setenv("MGEN_ATTN", name)
        cache = KVCache(mode="record")
        m(_codes(2, 0.9, 5), labels, cache=cache)
        cache.mode, cache.group = "reuse", group
        outs.append(m(_codes(2, 0.6, 5), labels, cache=cache))
    assert len(outs) >= 2
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-5)


def test_reuse_without_recording_is_an_error():
    attn = Attention(8, num_heads=2)
    with pytest.raises(RuntimeError, match="full step"):
        attn(torch.randn(1, 3, 8), cache=KVCache(mode="reuse", positions=torch.tensor([[0, 1, 2]])))
