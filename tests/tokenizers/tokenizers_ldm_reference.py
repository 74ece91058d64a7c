"""An independent functional evaluation of the LDM / taming autoencoder from a state dict with the official
key names (CompVis latent-diffusion & taming-transformers ``Encoder``/``Decoder``, LTH14/mar ``models/vae.py``),
shared by the tokenizer tests. Written from the architecture description, not from mgen's code."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ldm_state_dict(ch, ch_mult, nrb, z, enc_attn_levels, gen, dec_attn_levels=(), double_z=True, embed_dim=None,
                   codebook=None):
    """Parameter names and shapes of LDM's Encoder/Decoder + quant convs, written out from the official layout."""
    sd = {}

    def conv(name, cout, cin, k):
        sd[name + ".weight"] = torch.randn(cout, cin, k, k, generator=gen) / math.sqrt(cin * k * k)
        sd[name + ".bias"] = 0.1 * torch.randn(cout, generator=gen)

    def norm(name, c):
        sd[name + ".weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
        sd[name + ".bias"] = 0.1 * torch.randn(c, generator=gen)

    def res(name, cin, cout):
        norm(name + ".norm1", cin), conv(name + ".conv1", cout, cin, 3)
        norm(name + ".norm2", cout), conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cout, cin, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    n = len(ch_mult)
    conv("encoder.conv_in", ch, 3, 3)
    cin = ch
    for i in range(n):
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i in enc_attn_levels:
                attn(f"encoder.down.{i}.attn.{j}", cin)
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    res("encoder.mid.block_1", cin, cin), attn("encoder.mid.attn_1", cin), res("encoder.mid.block_2", cin, cin)
    norm("encoder.norm_out", cin)
    e = z if embed_dim is None else embed_dim
    if double_z:
        conv("encoder.conv_out", 2 * z, cin, 3)
        conv("quant_conv", 2 * e, 2 * z, 1), conv("post_quant_conv", z, e, 1)
    else:
        conv("encoder.conv_out", z, cin, 3)
        conv("quant_conv", e, z, 1), conv("post_quant_conv", z, e, 1)
    if codebook is not None:
        sd["quantize.embedding.weight"] = torch.randn(codebook, e, generator=gen)
    conv("decoder.conv_in", cin, z, 3)
    res("decoder.mid.block_1", cin, cin), attn("decoder.mid.attn_1", cin), res("decoder.mid.block_2", cin, cin)
    for i in reversed(range(n)):
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i in dec_attn_levels:
                attn(f"decoder.up.{i}.attn.{j}", cin)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin), conv("decoder.conv_out", 3, cin, 3)
    return sd


def _f_conv(sd, name, x, stride=1, pad=None):
    w = sd[name + ".weight"]
    p = w.shape[-1] // 2 if pad is None else pad
    return F.conv2d(x, w, sd[name + ".bias"], stride=stride, padding=p)


def _f_norm(sd, name, x):
    return F.group_norm(x, 32, sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)


def _f_res(sd, name, x):
    h = _f_conv(sd, name + ".conv1", F.silu(_f_norm(sd, name + ".norm1", x)))
    h = _f_conv(sd, name + ".conv2", F.silu(_f_norm(sd, name + ".norm2", h)))
    if name + ".nin_shortcut.weight" in sd:
        x = _f_conv(sd, name + ".nin_shortcut", x)
    return x + h


def _f_attn(sd, name, x):
    b, c, hh, ww = x.shape
    h = _f_norm(sd, name + ".norm", x)
    q, k, v = (_f_conv(sd, f"{name}.{p}", h).flatten(2) for p in "qkv")
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
    out = torch.einsum("bij,bcj->bci", w, v).reshape(b, c, hh, ww)
    return x + _f_conv(sd, name + ".proj_out", out)


def f_encode(sd, x, n, nrb):
    """The quant_conv output (moments for a KL-VAE, pre-quantisation latents for a VQGAN)."""
    h = _f_conv(sd, "encoder.conv_in", x)
    for i in range(n):
        for j in range(nrb):
            h = _f_res(sd, f"encoder.down.{i}.block.{j}", h)
            if f"encoder.down.{i}.attn.{j}.q.weight" in sd:
                h = _f_attn(sd, f"encoder.down.{i}.attn.{j}", h)
        if i != n - 1:  # LDM pads right/bottom by one, then a stride-2 3x3 conv
            h = _f_conv(sd, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2, pad=0)
    h = _f_res(sd, "encoder.mid.block_2", _f_attn(sd, "encoder.mid.attn_1", _f_res(sd, "encoder.mid.block_1", h)))
    h = _f_conv(sd, "encoder.conv_out", F.silu(_f_norm(sd, "encoder.norm_out", h)))
    return _f_conv(sd, "quant_conv", h)


def f_decode(sd, z, n, nrb):
    h = _f_conv(sd, "decoder.conv_in", _f_conv(sd, "post_quant_conv", z))
    h = _f_res(sd, "decoder.mid.block_2", _f_attn(sd, "decoder.mid.attn_1", _f_res(sd, "decoder.mid.block_1", h)))
    for i in reversed(range(n)):
        for j in range(nrb + 1):
            h = _f_res(sd, f"decoder.up.{i}.block.{j}", h)
            if f"decoder.up.{i}.attn.{j}.q.weight" in sd:
                h = _f_attn(sd, f"decoder.up.{i}.attn.{j}", h)
        if i != 0:
            h = _f_conv(sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _f_conv(sd, "decoder.conv_out", F.silu(_f_norm(sd, "decoder.norm_out", h)))


