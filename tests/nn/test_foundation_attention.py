"""Attention backends agree with the math reference; blocks and the K/V cache behave."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import UserError
from mgen.nn import AdaLNBlock, Attention, KVCache, ViTBlock, attention, available_backends, resolve_backend

BACKENDS = available_backends()


def _qkv(b=2, h=3, nq=7, nk=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, nq, d, generator=g), torch.randn(b, h, nk, d, generator=g), torch.randn(b, h, nk, d, generator=g))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
@pytest.mark.parametrize("nk", [7, 11])
def test_backends_match_math(backend, mask_kind, nk):
    q, k, v = _qkv(nk=nk)
    g = torch.Generator().manual_seed(1)
    mask, causal = None, False
    if mask_kind == "bool":
        mask = torch.rand(2, 1, 7, nk, generator=g) > 0.3
        mask[..., 0] = True  # every query sees at least one key
    elif mask_kind == "float":
        mask = torch.randn(2, 3, 7, nk, generator=g)
    elif mask_kind == "causal":
        causal = True
    ref = attention(q, k, v, mask, backend="math", is_causal=causal)
    out = attention(q, k, v, mask, backend=backend, is_causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_math_backend_is_softmax_attention():
    q, k, v = _qkv(b=1, h=1, nq=3, nk=4, d=2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2**0.5, -1) @ v
    torch.testing.assert_close(attention(q, k, v, backend="math"), expected)


def test_backend_selection(monkeypatch):
    monkeypatch.setenv("MGEN_ATTN", "math")
    assert resolve_backend() == "math"
    assert resolve_backend("sdpa") == "sdpa"
    monkeypatch.setenv("MGEN_ATTN", "auto")
    assert resolve_backend() in BACKENDS
    with pytest.raises(UserError, match="unknown attention backend"):
        resolve_backend("flash9")
    if "xformers" not in BACKENDS:
        with pytest.raises(UserError, match="xformers is not installed"):
            resolve_backend("xformers")


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_follow_backend(monkeypatch, backend):
    torch.manual_seed(0)
    block, ada = ViTBlock(32, 4).eval(), AdaLNBlock(32, 4).eval()
    torch.nn.init.normal_(ada.adaLN_modulation[-1].weight, std=0.1)
    x, c = torch.randn(2, 9, 32), torch.randn(2, 32)
    monkeypatch.setenv("MGEN_ATTN", "math")
    ref = block(x), ada(x, c)
    monkeypatch.setenv("MGEN_ATTN", backend)
    torch.testing.assert_close(block(x), ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ada(x, c), ref[1], atol=1e-5, rtol=1e-5)


def test_vit_block_uses_timm_key_names():
    keys = set(ViTBlock(16, 2).state_dict())
    assert keys == {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                    "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                    "mlp.fc2.weight", "mlp.fc2.bias"}
    assert "adaLN_modulation.1.weight" in AdaLNBlock(16, 2).state_dict()


def test_adaln_zero_block_starts_as_identity():
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(AdaLNBlock(16, 2)(x, torch.randn(2, 16)), x)


def test_kv_cache_reuse_recomputes_only_some_rows():
    """Rows recomputed against the recorded K/V equal the full evaluation's rows (ReCAP's cheap step)."""
    torch.manual_seed(0)
    attn = Attention(16, 4, qkv_bias=True).eval()
    x = torch.randn(2, 10, 16)
    cache = KVCache(mode="record")
    full = attn(x, cache=cache)
    idx = torch.tensor([[1, 4, 7], [0, 2, 9]])
    cache.mode, cache.positions = "reuse", idx
    rows = torch.gather(x, 1, idx[..., None].expand(-1, -1, 16))
    part = attn(rows, cache=cache)
    torch.testing.assert_close(part, torch.gather(full, 1, idx[..., None].expand(-1, -1, 16)), atol=1e-5, rtol=1e-5)
