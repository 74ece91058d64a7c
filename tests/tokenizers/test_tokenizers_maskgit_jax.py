"""MaskGIT (JAX) VQGAN tokenizer (ENAT's ``vqgan_jax_strongaug.ckpt``): tiny random weights written here in the
official key layout, loaded through ``from_pretrained``, checked against a functional evaluation of that layout."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
import yaml

from mgen.errors import UserError, WeightsError
from mgen.tokenizers.maskgit_jax_vq import MaskGITJaxVQConfig, MaskGITJaxVQTokenizer

CH, CH_MULT, NRB, Z, K = 32, (1, 1, 2, 2, 2), 1, 32, 64  # 5 levels: stride 16 as the real one


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official names (ENAT taming/models/vqgan.py VQModel with its modified
    Encoder/Decoder: bias-free convs in the blocks and the encoder's conv_in, no attention, no quant_conv)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name, cout, cin, k, bias=True):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
        if bias:
            sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1

    def norm(name, c):
        sd[f"{name}.weight"] = 1 + torch.randn(c, generator=g) * 0.1
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1

    def block(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cout, cin, 3, bias=False)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3, bias=False)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cout, 1, bias=False)

    conv("encoder.conv_in", CH, 3, 3, bias=False)
    w = CH
    for i, m in enumerate(CH_MULT):
        for j in range(NRB):
            block(f"encoder.down.{i}.block.{j}", w, CH * m)
            w = CH * m
    block("encoder.mid.block_1", w, w)
    block("encoder.mid.block_2", w, w)
    norm("encoder.norm_out", w)
    conv("encoder.conv_out", Z, w, 1)
    conv("decoder.conv_in", w, Z, 3)
    block("decoder.mid.block_1", w, w)
    block("decoder.mid.block_2", w, w)
    for i in reversed(range(len(CH_MULT))):
        for j in range(NRB):
            block(f"decoder.up.{i}.block.{j}", w, CH * CH_MULT[i])
            w = CH * CH_MULT[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", w, w, 3)
    norm("decoder.norm_out", w)
    conv("decoder.conv_out", 3, w, 3)
    sd["quantize.embedding.weight"] = torch.randn(K, Z, generator=g)
    return sd


def _f_block(sd, name, x):
    gn = lambda n, t: F.group_norm(t, 32, sd[f"{n}.weight"], sd[f"{n}.bias"], eps=1e-6)  # noqa: E731
    h = F.conv2d(F.silu(gn(f"{name}.norm1", x)), sd[f"{name}.conv1.weight"], padding=1)
    h = F.conv2d(F.silu(gn(f"{name}.norm2", h)), sd[f"{name}.conv2.weight"], padding=1)
    if f"{name}.nin_shortcut.weight" in sd:  # the JAX ResBlock's shortcut reads the block output
        return h + F.conv2d(h, sd[f"{name}.nin_shortcut.weight"])
    return x + h


def _f_encode(sd, x01):
    h = F.conv2d(x01, sd["encoder.conv_in.weight"], padding=1)
    for i in range(len(CH_MULT)):
        for j in range(NRB):
            h = _f_block(sd, f"encoder.down.{i}.block.{j}", h)
        if i != len(CH_MULT) - 1:
            h = F.avg_pool2d(h, 2)
    h = _f_block(sd, "encoder.mid.block_2", _f_block(sd, "encoder.mid.block_1", h))
    h = F.silu(F.group_norm(h, 32, sd["encoder.norm_out.weight"], sd["encoder.norm_out.bias"], eps=1e-6))
    z = F.conv2d(h, sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"])
    e = sd["quantize.embedding.weight"]
    d = ((z.permute(0, 2, 3, 1)[..., None, :] - e) ** 2).sum(-1)
    return d.argmin(-1)


def _f_decode(sd, idx):
    h = F.conv2d(sd["quantize.embedding.weight"][idx].permute(0, 3, 1, 2), sd["decoder.conv_in.weight"],
                 sd["decoder.conv_in.bias"], padding=1)
    h = _f_block(sd, "decoder.mid.block_2", _f_block(sd, "decoder.mid.block_1", h))
    for i in reversed(range(len(CH_MULT))):
        for j in range(NRB):
            h = _f_block(sd, f"decoder.up.{i}.block.{j}", h)
        if i != 0:
            h = F.conv2d(F.interpolate(h, scale_factor=2.0, mode="nearest"), sd[f"decoder.up.{i}.upsample.conv.weight"],
                         sd[f"decoder.up.{i}.upsample.conv.bias"], padding=1)
    h = F.silu(F.group_norm(h, 32, sd["decoder.norm_out.weight"], sd["decoder.norm_out.bias"], eps=1e-6))
    return F.conv2d(h, sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"], padding=1)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    d = tmp_path_factory.mktemp("mgjax")
    sd = _official_state_dict()
    torch.save({"state_dict": sd}, d / "vqgan_jax_strongaug.ckpt")
    torch.save(sd, d / "flat.pth")
    return sd, d


def test_loads_official_layout_and_matches_functional_reference(official):
    sd, d = official
    tok = MaskGITJaxVQTokenizer.from_pretrained(d / "vqgan_jax_strongaug.ckpt")
    assert tok.arch == MaskGITJaxVQConfig(ch=CH, ch_mult=CH_MULT, num_res_blocks=NRB, z_channels=Z, codebook_size=K)
    assert tok.codebook_size == K and tok.stride == 16 and tok.scaling_factor == 1.0
    assert set(tok.state_dict()) == set(sd)
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        idx = tok.encode(x)
        assert idx.dtype == torch.long and idx.shape == (2, 2, 3)
        assert 0 <= int(idx.min()) and int(idx.max()) < K
        assert torch.equal(idx, _f_encode(sd, x * 0.5 + 0.5))  # the network works on [0, 1] pixels
        assert torch.equal(idx, tok.encode_01(x * 0.5 + 0.5))
        out, ref = tok.decode(idx), _f_decode(sd, idx)
        assert out.shape == (2, 3, 32, 48)
        assert ((out - (ref * 2 - 1)).abs().max() / ref.abs().max()) < 1e-4  # decode → [-1, 1], unclamped
        assert torch.allclose(tok.decode_01(idx), ref, atol=1e-5, rtol=1e-4)
        flat = MaskGITJaxVQTokenizer.from_pretrained(d / "flat.pth")
        assert torch.equal(flat.encode(x), idx)


def test_save_load_round_trip(official, tmp_path):
    from mgen.tokenizers import load_tokenizer

    _, d = official
    tok = MaskGITJaxVQTokenizer.from_pretrained(d / "vqgan_jax_strongaug.ckpt")
    tok.save_pretrained(tmp_path / "folder")
    tok.save_file(tmp_path / "one.safetensors")
    x = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        idx = tok.encode(x)
        for other in (MaskGITJaxVQTokenizer.from_pretrained(tmp_path / "folder"),
                      MaskGITJaxVQTokenizer.from_pretrained(tmp_path / "one.safetensors"),
                      load_tokenizer(tmp_path / "folder"), load_tokenizer(tmp_path / "one.safetensors"),
                      load_tokenizer(d / "vqgan_jax_strongaug.ckpt")):
            assert isinstance(other, MaskGITJaxVQTokenizer) and other.arch == tok.arch
            assert torch.equal(other.encode(x), idx)
            assert torch.equal(other.decode(idx), tok.decode(idx))


def test_registry_entry_and_convert_cli(official, tmp_path, monkeypatch):
    from mgen import registry
    from mgen.cli import main
    from mgen.tokenizers import load_tokenizer

    entry = registry.get("maskgit-vqgan-jax")
    assert entry.is_tokenizer and entry.family == "maskgit-jax-vq"
    cfg = MaskGITJaxVQConfig.from_mapping(entry.arch)
    assert (cfg.codebook_size, cfg.z_channels, cfg.ch_mult, cfg.stride) == (1024, 256, (1, 1, 2, 2, 4), 16)
    assert registry.get("enat-l").tokenizer == "maskgit-vqgan-jax"
    _, d = official
    tok = load_tokenizer("maskgit-vqgan-jax", weights=d / "vqgan_jax_strongaug.ckpt")
    assert isinstance(tok, MaskGITJaxVQTokenizer)
    monkeypatch.setenv("MGEN_HOME", str(tmp_path / "home"))  # the name alone: looked for in $MGEN_HOME
    with pytest.raises(WeightsError, match="vqgan_jax_strongaug.ckpt"):
        MaskGITJaxVQTokenizer.from_pretrained("maskgit-vqgan-jax")
    with pytest.raises(UserError, match="not the MaskGIT"):
        MaskGITJaxVQTokenizer.from_pretrained("vq-digits")
    assert main(["convert", "maskgit-vqgan-jax", str(d / "vqgan_jax_strongaug.ckpt"), str(tmp_path / "out")]) == 0
    back = MaskGITJaxVQTokenizer.from_pretrained(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(tok.state_dict().values(), back.state_dict().values()))


def test_enat_pipeline_uses_it(official, tmp_path):
    from mgen.models.enat import ENAT
    from mgen.pipelines.enat import ENATPipeline

    _, d = official
    en = dict(grid_size=1, hidden_dim=32, enc_depth=1, dec_depth=1, heads=4, codebook_size=K, num_classes=10)
    torch.manual_seed(0)
    ENAT(en).save_pretrained(tmp_path / "en")
    cfg = tmp_path / "en.yaml"
    cfg.write_text(yaml.safe_dump({"name": "tiny-en", "family": "enat", "arch": en, "tokenizer": "maskgit-vqgan-jax",
                                   "sampler": {"num_steps": 1, "cfg": 1.0, "samp_temp": 1.0}}))
    pipe = ENATPipeline.from_pretrained(tmp_path / "en", config=str(cfg), tokenizer=str(d / "vqgan_jax_strongaug.ckpt"))
    assert isinstance(pipe.vqvae, MaskGITJaxVQTokenizer)
    out = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (2, 3, 16, 16) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_bad_inputs(official, tmp_path):
    sd, d = official
    tok = MaskGITJaxVQTokenizer.from_pretrained(d / "flat.pth")
    with pytest.raises(ValueError, match="channels"):
        tok.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="stride 16"):
        tok.encode(torch.zeros(1, 3, 24, 16))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tok.decode(torch.full((1, 1, 1), K, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(torch.zeros(1, 1, 1))
    bad = dict(sd)
    bad["decoder.conv_out.bias"] = torch.full_like(bad["decoder.conv_out.bias"], float("nan"))
    torch.save(bad, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match="NaN"):
        MaskGITJaxVQTokenizer.from_pretrained(tmp_path / "nan.pth")
    taming = {**sd, "encoder.conv_in.bias": torch.zeros(CH), "quant_conv.weight": torch.zeros(Z, Z, 1, 1)}
    torch.save({"state_dict": taming}, tmp_path / "taming.ckpt")
    with pytest.raises(WeightsError, match="VQTokenizer"):
        MaskGITJaxVQTokenizer.from_pretrained(tmp_path / "taming.ckpt")
    missing = {k: v for k, v in sd.items() if k != "decoder.up.1.upsample.conv.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="missing"):
        MaskGITJaxVQTokenizer.from_pretrained(tmp_path / "missing.pth")
    (tmp_path / "trunc.ckpt").write_bytes((d / "flat.pth").read_bytes()[:1000])
    with pytest.raises(WeightsError, match="corrupt"):
        MaskGITJaxVQTokenizer.from_pretrained(tmp_path / "trunc.ckpt")
    torch.save({"state_dict": sd, "x": types.SimpleNamespace(a=1)}, tmp_path / "evil.ckpt")
    with pytest.raises(WeightsError, match="refused"):
        MaskGITJaxVQTokenizer.from_pretrained(tmp_path / "evil.ckpt")
    with pytest.raises(UserError, match="embed_dim"):
        MaskGITJaxVQConfig.from_mapping({"z_channels": 256, "embed_dim": 64})
