"""Every tokenizer class is a diffusers ModelMixin + ConfigMixin (contract of issue 14): save_pretrained →
from_pretrained round trips exactly, the diffusers component rule loads the folder, ``X(**arch)`` / ``from_arch``,
``torch_dtype`` on every path with float32 islands under bf16 (issue 15), ``looks_like`` per official format, and the
converters build their output atomically (issue 19, items 3 and 4)."""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch

from mgen.errors import UserError, WeightsError
from mgen.tokenizers.kl import KLTokenizer
from mgen.tokenizers.maskgit_jax_vq import MaskGITJaxVQTokenizer
from mgen.tokenizers.patch import PatchTokenizer
from mgen.tokenizers.rae import RAETokenizer
from mgen.tokenizers.vq import VQTokenizer
from tokenizers_ldm_reference import ldm_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "kl": (KLTokenizer, dict(ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, resolution=8, norm_num_groups=4,
                             attn_resolutions=[4], scaling_factor=0.5)),
    "vq": (VQTokenizer, dict(ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, embed_dim=4, codebook_size=16,
                             resolution=8, norm_num_groups=4, l2_norm=True, ema=True, dead_threshold=0.01)),
    "maskgit-jax": (MaskGITJaxVQTokenizer, dict(network="maskgit-jax", ch=8, ch_mult=[1, 2], num_res_blocks=1,
                                                z_channels=8, embed_dim=8, codebook_size=16, resolution=8,
                                                norm_num_groups=4)),
    "rae": (RAETokenizer, dict(encoder=dict(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32),
                               decoder=dict(hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0, patch_size=4),
                               encoder_input_size=8, image_mean=[0.5] * 3, image_std=[0.5] * 3)),
    "patch": (PatchTokenizer, dict(patch_size=2, channels=1, image_size=8, scaling_factor=1.5, shift=-0.4)),
}


def _images(n: int = 2, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _random(kind: str):
    cls, arch = TINY[kind]
    torch.manual_seed(0)
    tok = cls(**arch).eval()
    with torch.no_grad():  # non-trivial statistics / norms
        for name, t in [*tok.named_parameters(), *tok.named_buffers()]:
            if t.is_floating_point() and ("norm" in name or "latents_mean" in name):
                t.add_(0.1 * torch.randn_like(t))
    return tok


@pytest.mark.parametrize("kind", list(TINY))
def test_save_pretrained_round_trip_and_diffusers_component_rule(kind, tmp_path):
    cls, arch = TINY[kind]
    tok = _random(kind)
    assert tok.from_arch(arch).config == cls(**arch).config
    tok.save_pretrained(tmp_path / "tok")
    names = {p.name for p in (tmp_path / "tok").iterdir()}
    assert "config.json" in names and (kind == "patch" or "diffusion_pytorch_model.safetensors" in names)
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert cfg["_class_name"] == cls.__name__
    back = cls.from_pretrained(tmp_path / "tok")
    # diffusers' rule for a pipeline component: import_module(module).<class>.from_pretrained(folder)
    rule = getattr(importlib.import_module(cls.__module__), cfg["_class_name"]).from_pretrained(tmp_path / "tok")
    x = _images()
    for other in (back, rule):
        assert type(other) is cls and not other.training
        a, b = tok.state_dict(), other.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        with torch.no_grad():
            z = tok.encode(x)
            assert torch.equal(other.encode(x), z)
            assert torch.equal(other.decode(z), tok.decode(z))
        assert other.scaling_factor == tok.scaling_factor


def test_arch_spellings_and_unknown_keys():
    kl = KLTokenizer(**TINY["kl"][1])
    assert list(kl.config.block_out_channels) == [8, 16] and kl.config.down_block_types[1] == "AttnDownEncoderBlock2D"
    assert "ch" not in kl.config and kl.scaling_factor == 0.5
    # ConfigMixin.from_config of an LDM-spelled mapping builds that architecture (not diffusers' defaults)
    assert KLTokenizer.from_config(TINY["kl"][1]).config == kl.config
    with pytest.raises(UserError, match="unknown keys"):
        KLTokenizer.from_arch({**TINY["kl"][1], "colour": "blue"})
    with pytest.raises(UserError, match="not both"):
        KLTokenizer(ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, block_out_channels=[8, 16])
    with pytest.raises(UserError, match="unknown keys"):
        VQTokenizer.from_arch({**TINY["vq"][1], "codebook": 3})
    with pytest.raises(UserError):
        MaskGITJaxVQTokenizer.from_arch({**TINY["maskgit-jax"][1], "network": "taming"})
    with pytest.raises(UserError, match="unknown keys"):
        RAETokenizer.from_arch({**TINY["rae"][1], "decoder": {"depth": 1, "widht": 3}})
    vq = VQTokenizer(**TINY["vq"][1])
    assert vq.quantizer.l2_norm and vq.quantizer.ema and vq.codebook_size == 16 and vq.scaling_factor == 1.0


@pytest.mark.parametrize("name", ["kl-digits", "vq-digits", "rae-digits", "patch-digits", "maskgit-vqgan-jax",
                                  "kl16", "sd-vae-ft-ema", "maskgit-vqgan"])
def test_every_registered_tokenizer_arch_builds(name):
    from mgen import registry
    from mgen.families import get_family

    entry = registry.get(name)
    cls = get_family(entry.family).model_class()
    with torch.device("meta"):  # shapes only
        tok = cls(**entry.arch)
    assert isinstance(tok, cls) and tok.from_arch is not None


@pytest.mark.parametrize("kind", ["kl", "vq", "maskgit-jax", "rae"])
def test_bfloat16_keeps_float32_islands(kind, tmp_path):
    tok = _random(kind)
    tok.save_pretrained(tmp_path / "tok")
    cls = type(tok)
    x = _images()
    loaded = cls.from_pretrained(tmp_path / "tok", torch_dtype=torch.bfloat16)
    cast = _random(kind).to(torch.bfloat16)
    for m in (loaded, cast):
        assert m.dtype == torch.bfloat16
        sd = m.state_dict()
        fp32 = [k for k, v in sd.items() if v.dtype == torch.float32]
        if kind in ("vq", "maskgit-jax"):
            assert "quantize.embedding.weight" in fp32
            assert torch.equal(sd["quantize.embedding.weight"], tok.state_dict()["quantize.embedding.weight"])
        if kind == "rae":
            assert {"latents_mean", "latents_var", "pixel_mean", "pixel_std"} <= set(fp32)
            assert torch.equal(sd["latents_mean"], tok.latents_mean)
        with torch.no_grad():
            z = m.encode(x)
            out = m.decode(z)
            assert out.dtype == torch.float32 and torch.isfinite(out).all()
            assert z.dtype == (torch.long if kind in ("vq", "maskgit-jax") else torch.float32)
            assert torch.equal(m.encode(x), z) and torch.equal(m.decode(z), out)  # deterministic
            ref = tok.decode(tok.encode(x))
            assert (out - ref).abs().mean() < 0.1  # bf16 is close to the float32 result
    # back to float32: the islands were never rounded
    again = cast.to(torch.float32)
    assert all(v.dtype == torch.float32 for v in again.state_dict().values() if v.is_floating_point())


def test_torch_dtype_on_official_and_registered_paths(tmp_path):
    sd = ldm_state_dict(32, (1, 2), 1, 4, (), torch.Generator().manual_seed(0))
    torch.save({"model": sd}, tmp_path / "kl.ckpt")
    tok = KLTokenizer.from_pretrained(tmp_path / "kl.ckpt", torch_dtype=torch.bfloat16, low_cpu_mem_usage=True,
                                      variant=None, use_safetensors=None, device_map=None)
    assert tok.dtype == torch.bfloat16 and not tok.training
    assert KLTokenizer.from_pretrained(tmp_path / "kl.ckpt", config="kl16").scaling_factor == pytest.approx(0.2325)
    assert KLTokenizer.from_pretrained(tmp_path / "kl.ckpt", config={"scaling_factor": 0.7}).scaling_factor == 0.7
    assert VQTokenizer.from_pretrained("vq-digits", torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert RAETokenizer.from_pretrained("rae-digits", torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    # what diffusers' pipeline loader passes never fails (newer loaders add arguments)
    assert KLTokenizer.from_pretrained(tmp_path / "kl.ckpt", use_flashpack=False, provider=None).dtype == torch.float32


def test_looks_like_tells_the_official_formats_apart():
    from mgen.tokenizers import kl, maskgit_jax_vq, vq

    g = torch.Generator().manual_seed(0)
    official = {
        "kl": ldm_state_dict(8, (1, 2), 1, 4, (), g),
        "vq": ldm_state_dict(8, (1, 2), 1, 8, (1,), g, dec_attn_levels=(1,), double_z=False, embed_dim=4, codebook=16),
        "maskgit-jax": MaskGITJaxVQTokenizer(**TINY["maskgit-jax"][1]).state_dict(),
    }
    detectors = {"kl": kl.looks_like, "vq": vq.looks_like, "maskgit-jax": maskgit_jax_vq.looks_like}
    for fmt, sd in official.items():
        assert [name for name, f in detectors.items() if f(sd)] == [fmt]
    assert not any(f({"foo.weight": torch.zeros(1)}) for f in detectors.values())
    assert not any(f(KLTokenizer(**TINY["kl"][1]).state_dict()) for f in detectors.values())  # diffusers names


# -- converters: temp folder + rename, --force only over an mgen output (issue 19, items 3 and 4) ---------------

def _kl_ckpt(tmp_path):
    torch.save({"model": ldm_state_dict(32, (1, 2), 1, 4, (), torch.Generator().manual_seed(0))}, tmp_path / "kl.ckpt")
    return tmp_path / "kl.ckpt"


def _jax_ckpt(tmp_path):
    arch = {**TINY["maskgit-jax"][1], "ch": 32, "norm_num_groups": 32}  # (the official files use 32 groups)
    torch.save({"state_dict": MaskGITJaxVQTokenizer(**arch).state_dict()}, tmp_path / "jax.ckpt")
    return tmp_path / "jax.ckpt"


def _vq_ckpt(tmp_path):
    sd = ldm_state_dict(32, (1, 2), 1, 8, (1,), torch.Generator().manual_seed(0), dec_attn_levels=(1,), double_z=False,
                        embed_dim=4, codebook=16)
    torch.save({"state_dict": sd}, tmp_path / "last.ckpt")
    return tmp_path / "last.ckpt"


CONVERTERS = [("mgen.tokenizers.kl", "convert_ldm_checkpoint", KLTokenizer, _kl_ckpt),
              ("mgen.tokenizers.vq", "convert_maskgit_vqgan", VQTokenizer, _vq_ckpt),
              ("mgen.tokenizers.maskgit_jax_vq", "convert_maskgit_jax_vqgan", MaskGITJaxVQTokenizer, _jax_ckpt)]


@pytest.mark.parametrize("module,fn,cls,make", CONVERTERS, ids=[c[1] for c in CONVERTERS])
def test_converter_is_atomic_and_force_is_safe(module, fn, cls, make, tmp_path, monkeypatch):
    convert = getattr(importlib.import_module(module), fn)
    src, out = make(tmp_path), tmp_path / "out"

    def dies(self, folder, **kwargs):  # a kill in the middle of the write
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cls, "save_pretrained", dies)
        with pytest.raises(KeyboardInterrupt):
            convert(src, out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    (tmp_path / ".tmp-out-stale").mkdir()  # a temp folder an earlier, killed run left: cleaned on the next write
    convert(src, out)
    assert not (tmp_path / ".tmp-out-stale").exists()
    assert cls.from_pretrained(out).codebook_size if cls is not KLTokenizer else cls.from_pretrained(out)
    with pytest.raises(UserError, match="already exists"):
        convert(src, out)
    convert(src, out, force=True)  # replaces its own output
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="did not write"):
        convert(src, other, force=True)
    assert (other / "notes.txt").read_text() == "keep me" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def _official_rae_parts(tmp_path):
    """A ViT-MAE encoder folder, an official decoder config folder and its GeneralDecoder state dict."""
    from transformers import ViTMAEConfig, ViTMAEModel

    torch.manual_seed(0)
    ViTMAEModel(ViTMAEConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(tmp_path / "enc")
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "config.json").write_text(json.dumps({
        "decoder_hidden_size": 16, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 32}))
    tok = RAETokenizer.from_official(tmp_path / "enc", tmp_path / "dec", None, encoder_input_size=8, decoder_patch_size=4)
    sd = {"decoder_embed.weight": tok.decoder.embed.weight, "decoder_embed.bias": tok.decoder.embed.bias,
          "trainable_cls_token": tok.decoder.cls_token, "decoder_norm.weight": tok.decoder.norm.weight,
          "decoder_norm.bias": tok.decoder.norm.bias, "decoder_pred.weight": tok.decoder.pred.weight,
          "decoder_pred.bias": tok.decoder.pred.bias}
    blk = tok.decoder.blocks[0]
    q, k, v = blk.attn.qkv.weight.chunk(3)
    qb, kb, vb = blk.attn.qkv.bias.chunk(3)
    pre = "decoder_layers.0."
    sd.update({pre + "attention.attention.query.weight": q, pre + "attention.attention.key.weight": k,
               pre + "attention.attention.value.weight": v, pre + "attention.attention.query.bias": qb,
               pre + "attention.attention.key.bias": kb, pre + "attention.attention.value.bias": vb,
               pre + "attention.output.dense.weight": blk.attn.proj.weight,
               pre + "attention.output.dense.bias": blk.attn.proj.bias,
               pre + "intermediate.dense.weight": blk.mlp.fc1.weight, pre + "intermediate.dense.bias": blk.mlp.fc1.bias,
               pre + "output.dense.weight": blk.mlp.fc2.weight, pre + "output.dense.bias": blk.mlp.fc2.bias,
               pre + "layernorm_before.weight": blk.norm1.weight, pre + "layernorm_before.bias": blk.norm1.bias,
               pre + "layernorm_after.weight": blk.norm2.weight, pre + "layernorm_after.bias": blk.norm2.bias})
    torch.save({k: v.detach().clone() for k, v in sd.items()}, tmp_path / "model.pt")
    return tmp_path / "model.pt", tmp_path / "enc", tmp_path / "dec"


def test_rae_converter_is_atomic_and_keeps_the_encoder(tmp_path, monkeypatch):
    from mgen.tokenizers.rae import convert_official_rae

    src, enc, dec = _official_rae_parts(tmp_path)
    out = tmp_path / "out"
    opts = dict(encoder=str(enc), decoder_config=str(dec), encoder_input_size=8, decoder_patch_size=4)

    def dies(self, folder, **kwargs):
        (folder / "config.json").write_text("{")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(RAETokenizer, "save_pretrained", dies)
        with pytest.raises((OSError, UserError), match="No space left"):  # (a full disk: one line naming out/)
            convert_official_rae(src, out, **opts)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    convert_official_rae(src, out, **opts)
    ref = RAETokenizer.from_official(enc, dec, src, encoder_input_size=8, decoder_patch_size=4)
    import shutil

    shutil.rmtree(enc)  # the saved folder holds the frozen encoder: no need for the encoder's folder any more
    back = RAETokenizer.from_pretrained(out)
    x = _images()
    with torch.no_grad():
        assert torch.equal(back.encode(x), ref.encode(x))
        assert torch.equal(back.decode(ref.encode(x)), ref.decode(ref.encode(x)))
    with pytest.raises(UserError, match="already exists"):
        convert_official_rae(src, out, **opts)


# -- security: no code from a folder without the opt-in, never a prompt (issue 19, item 1) ---------------------

def _evil_folder(tmp_path, model_type: str):
    marker = tmp_path / f"PWNED-{model_type}"
    folder = tmp_path / f"evil-{model_type}"
    folder.mkdir()
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    code += ("from transformers import PretrainedConfig, PreTrainedModel\n"
             "class EvilConfig(PretrainedConfig):\n    model_type = 'evilnet'\n"
             "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n")
    (folder / "evil.py").write_text(code)
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    return folder, marker


@pytest.mark.parametrize("model_type", ["evilnet", "vit_mae"])
def test_encoder_folder_code_never_runs_without_opt_in(model_type, tmp_path, monkeypatch):
    import io
    import sys

    from mgen.tokenizers.rae import load_encoder

    folder, marker = _evil_folder(tmp_path, model_type)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))  # an answer to a prompt that must not come
    with pytest.raises(WeightsError):
        load_encoder(folder)
    with pytest.raises(WeightsError):
        RAETokenizer.from_official(folder, tmp_path, None)
    assert not marker.exists()


def test_convert_rae_cli_refuses_folder_code_with_yes_on_stdin(tmp_path):
    import subprocess
    import sys

    folder, marker = _evil_folder(tmp_path, "evilnet")
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "config.json").write_text(json.dumps({
        "decoder_hidden_size": 16, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 32}))
    torch.save({}, tmp_path / "model.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MGEN_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "mgen", "convert", "rae", str(tmp_path / "model.pt"), str(tmp_path / "out"),
                        "--opt", f"encoder={folder}", "--opt", f"decoder_config={tmp_path / 'dec'}"],
                       input="y\n" * 5, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert not marker.exists()
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr and "auto_map" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_older_mgen_rae_folder_still_loads(tmp_path):
    """An RAE folder of the earlier mgen layout (config.json with ``encoder_config`` + ``model.safetensors``, buffers
    ``image_mean``/``image_std``) loads and equals the shipped single file it came from."""
    import shutil

    from mgen.hub import package_weights_dir
    from mgen.tokenizers.base import metadata_config

    shipped = package_weights_dir() / "rae-digits.safetensors"
    cfg = metadata_config(shipped)
    assert "encoder_config" in cfg  # the shipped file is in the older spelling
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    shutil.copy(shipped, tmp_path / "old" / "model.safetensors")
    a, b = RAETokenizer.from_pretrained(tmp_path / "old"), RAETokenizer.from_pretrained("rae-digits")
    x = _images(2, 16)
    with torch.no_grad():
        assert torch.equal(a.encode(x), b.encode(x))
    b.save_pretrained(tmp_path / "new")  # and the new layout restores it exactly
    c = RAETokenizer.from_pretrained(tmp_path / "new")
    assert all(torch.equal(v, c.state_dict()[k]) for k, v in b.state_dict().items())
    assert c.latent_norm == b.latent_norm == "std_eps"
