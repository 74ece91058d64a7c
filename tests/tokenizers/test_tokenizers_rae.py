"""RAETokenizer: diffusers AutoencoderRAE parity, transformers encoders from folders, statistics, noise, training."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import UserError, WeightsError
from mgen.tokenizers.rae import RAETokenizer, load_encoder

torch.set_num_threads(1)
DEC = {"hidden_size": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "patch_size": 4}


def _diffusers_rae(tmp_path):
    from diffusers import AutoencoderRAE

    torch.manual_seed(0)
    ref = AutoencoderRAE(encoder_type="mae", encoder_hidden_size=64, encoder_patch_size=4, encoder_num_hidden_layers=2,
                         decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                         decoder_intermediate_size=64, patch_size=4, encoder_input_size=16,
                         latents_mean=torch.randn(64, 4, 4).tolist(), latents_std=(torch.rand(64, 4, 4) + 0.5).tolist()).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "rae")
    return ref, tmp_path / "rae"


def test_parity_with_diffusers_autoencoder_rae(tmp_path):
    ref, folder = _diffusers_rae(tmp_path)
    tok = RAETokenizer.from_pretrained(folder)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z_ref = ref.encode((x + 1) / 2).latent  # diffusers' RAE takes [0, 1] images
        z = tok.encode(x)
        assert z.shape == (2, 64, 4, 4)
        torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tok.decode_raw(z_ref), ref.decode(z_ref).sample * 2 - 1, rtol=1e-4, atol=1e-4)
    tok.save_pretrained(tmp_path / "ours")
    tok.save_file(tmp_path / "one.safetensors")
    for p in (tmp_path / "ours", tmp_path / "one.safetensors"):
        back = RAETokenizer.from_pretrained(p)
        with torch.no_grad():
            torch.testing.assert_close(back.encode(x), z, rtol=0, atol=0)
            torch.testing.assert_close(back.decode(z), tok.decode(z), rtol=0, atol=0)


def _vit_mae_folder(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEModel

    torch.manual_seed(0)
    m = ViTMAEModel(ViTMAEConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, mask_ratio=0.75))
    m.save_pretrained(tmp_path / "mae")
    return tmp_path / "mae"


def _dinov2_folder(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    m = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(image_size=14, patch_size=7, hidden_size=32, num_hidden_layers=2,
                                                           num_attention_heads=4, intermediate_size=64, num_register_tokens=4))
    m.save_pretrained(tmp_path / "dino")
    return tmp_path / "dino"


def test_dinov2_registers_tokens_and_input_resizing(tmp_path):
    import torch.nn.functional as F

    folder = _dinov2_folder(tmp_path)
    tok = RAETokenizer.from_encoder(folder, DEC, encoder_input_size=14)  # 2x2 tokens of a 7-patch encoder
    ref = load_encoder(folder).eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1  # RAE: images are resized to the encoder's input size (e.g. 256 -> 224)
    with torch.no_grad():
        z = tok.raw_latents(x)
        pix = F.interpolate((x + 1) / 2, size=(14, 14), mode="bicubic", align_corners=False)
        pix = (pix - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        hidden = ref.embeddings(pix)
        for layer in ref.encoder.layer:
            hidden = layer(hidden)[0] if isinstance(layer(hidden), tuple) else layer(hidden)
        tokens = F.layer_norm(hidden, (32,), eps=ref.config.layer_norm_eps)[:, 1 + 4:]  # no affine; CLS + 4 registers dropped
        assert z.shape == (2, 32, 2, 2)
        torch.testing.assert_close(z, tokens.transpose(1, 2).reshape(2, 32, 2, 2), rtol=1e-4, atol=1e-4)
    assert tok.decode(tok.encode(x)).shape == (2, 3, 8, 8)  # decoder patch 4 x grid 2


def test_mae_encoder_keeps_all_patches_in_order(tmp_path):
    folder = _vit_mae_folder(tmp_path)
    tok = RAETokenizer.from_encoder(folder, DEC, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = tok.raw_latents(x)
        z2 = tok.raw_latents(x.flip(0))
    assert z.shape == (3, 32, 4, 4)
    torch.testing.assert_close(z2, z.flip(0))  # no random masking / shuffling
    # the token of a patch depends on that patch's position: moving the image content moves the tokens
    assert not torch.allclose(z[:, :, 0, 0], z[:, :, 3, 3])


def test_stats_and_noise_augmentation(tmp_path):
    folder = _vit_mae_folder(tmp_path)
    tok = RAETokenizer.from_encoder(folder, DEC, image_mean=[0.5] * 3, image_std=[0.5] * 3, noise_tau=0.8)
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    tok.compute_stats(x)
    with torch.no_grad():
        z = tok.encode(x)
        torch.testing.assert_close(z.mean(0), torch.zeros_like(z[0]), atol=1e-4, rtol=0)
        torch.testing.assert_close(z.var(0, unbiased=False), torch.ones_like(z[0]), atol=1e-3, rtol=1e-3)
        a = tok.noisy_latents(x[:4], torch.Generator().manual_seed(0))
        b = tok.noisy_latents(x[:4], torch.Generator().manual_seed(0))
        c = tok.noisy_latents(x[:4], torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and not torch.equal(a, c)
        # the noise is added to raw latents with sigma <= tau
        raw_diff = tok.denormalize(a) - tok.raw_latents(x[:4])
        assert raw_diff.abs().max() > 0 and raw_diff.flatten(1).std(1).max() < 0.8 * 1.3
        tok.noise_tau = 0.0
        torch.testing.assert_close(tok.noisy_latents(x[:4], torch.Generator().manual_seed(0)), z[:4])
    tok.save_stats(tmp_path / "stats.safetensors")
    torch.save({"mean": tok.latents_mean.mean((1, 2)), "var": tok.latents_var.mean((1, 2))}, tmp_path / "stat.pt")
    other = RAETokenizer.from_encoder(folder, DEC, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    other.load_stats(tmp_path / "stats.safetensors")
    torch.testing.assert_close(other.latents_var, tok.latents_var, rtol=0, atol=0)
    other.load_stats(tmp_path / "stat.pt")  # per-channel statistics broadcast over positions
    torch.testing.assert_close(other.latents_mean[:, 1, 2], tok.latents_mean.mean((1, 2)))


def test_bad_inputs(tmp_path):
    _, folder = _diffusers_rae(tmp_path)
    tok = RAETokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="channels"):
        tok.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="grid"):
        tok.decode(torch.zeros(1, 64, 3, 3))
    (tmp_path / "bad.safetensors").write_bytes(b"\x01" * 32)
    with pytest.raises(WeightsError):
        RAETokenizer.from_pretrained(tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError):
        load_encoder(tmp_path)


def test_training_builder_pretrains_mae_then_decoder(tmp_path):
    from mgen.registry import parse_entry
    from mgen.train.tasks import build_training

    entry = parse_entry({"name": "rae-tiny", "family": "rae",
                         "arch": {"encoder": {"image_size": 8, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 1,
                                              "num_attention_heads": 4, "intermediate_size": 64, "decoder_hidden_size": 32,
                                              "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 4,
                                              "decoder_intermediate_size": 64},
                                  "encoder_input_size": 8, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "decoder": DEC},
                         "train": {"image_size": 8, "mae_steps": 2, "batch_size": 8, "max_steps": 2, "progress": False}})
    trainer = build_training(entry, out_dir=str(tmp_path / "run"))
    assert (tmp_path / "run" / "encoder" / "checkpoint").is_dir()  # stage 1 (MAE) checkpointed, resumable
    # MAE's fixed sin-cos positions are set (transformers 5 leaves them at zero for a fresh ViTMAE)
    assert trainer.task.model.encoder.embeddings.position_embeddings.abs().sum() > 0
    enc_before = {k: v.clone() for k, v in trainer.task.model.encoder.state_dict().items()}
    record = trainer.train()
    assert record["step"] == 2
    for k, v in trainer.unwrapped.encoder.state_dict().items():
        assert torch.equal(v, enc_before[k])  # the encoder stays frozen
    assert trainer.eval_model.encode(torch.zeros(2, 3, 8, 8)).shape == (2, 32, 2, 2)


def test_siglip_vision_encoder_folder(tmp_path):
    # SigLIP / fixed-resolution SigLIP2 vision towers: every output token is a patch token (no [CLS])
    import torch.nn.functional as F
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    m = SiglipVisionModel(SiglipVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=4, intermediate_size=64)).eval()
    m.save_pretrained(tmp_path / "siglip")
    tok = RAETokenizer.from_encoder(tmp_path / "siglip", DEC, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        h = m.encoder(inputs_embeds=m.embeddings(x)).last_hidden_state
        ref = F.layer_norm(h, (32,), eps=m.config.layer_norm_eps)  # final LayerNorm without its affine (RAE)
        torch.testing.assert_close(tok.raw_latents(x), ref.transpose(1, 2).reshape(2, 32, 4, 4), rtol=1e-5, atol=1e-5)


def _official_rae_parts(tmp_path, grid=2, patch=4, hidden=24, depth=2, heads=4, inter=40, latent=32):
    """The official RAE stage-1 files (bytetriper/RAE): a ``GeneralDecoder`` state dict ``model.pt`` with its
    key names (transformers ViT-MAE layers under ``decoder_layers``), the decoder ``config.json`` and ``stat.pt``."""
    import json

    from mgen.nn import sincos_2d

    g = torch.Generator().manual_seed(0)

    def lin(name, cout, cin):
        sd[name + ".weight"] = torch.randn(cout, cin, generator=g) / cin ** 0.5
        sd[name + ".bias"] = 0.1 * torch.randn(cout, generator=g)

    def ln(name, c):
        sd[name + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[name + ".bias"] = 0.1 * torch.randn(c, generator=g)

    sd = {}
    lin("decoder_embed", hidden, latent)
    sd["decoder_pos_embed"] = sincos_2d(hidden, grid, extra_tokens=1)[None]  # MAE's fixed table, saved as a parameter
    for i in range(depth):
        p = f"decoder_layers.{i}"
        for n in ("query", "key", "value"):
            lin(f"{p}.attention.attention.{n}", hidden, hidden)
        lin(f"{p}.attention.output.dense", hidden, hidden)
        lin(f"{p}.intermediate.dense", inter, hidden), lin(f"{p}.output.dense", hidden, inter)
        ln(f"{p}.layernorm_before", hidden), ln(f"{p}.layernorm_after", hidden)
    ln("decoder_norm", hidden)
    lin("decoder_pred", patch * patch * 3, hidden)
    sd["trainable_cls_token"] = 0.1 * torch.randn(1, 1, hidden, generator=g)
    torch.save(sd, tmp_path / "model.pt")
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "config.json").write_text(json.dumps({
        "model_type": "vit_mae", "decoder_hidden_size": hidden, "decoder_intermediate_size": inter,
        "decoder_num_attention_heads": heads, "decoder_num_hidden_layers": depth, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "num_channels": 3, "qkv_bias": True, "patch_size": "SHOULD BE RELOADED"}))
    stats = {"mean": torch.randn(latent, grid, grid, generator=g), "var": torch.rand(latent, grid, grid, generator=g) + 0.3}
    torch.save(stats, tmp_path / "stat.pt")
    return sd, stats


def _reference_decode(sd, tokens, heads, patch, grid, eps=1e-12):
    """The official GeneralDecoder forward (ViT-MAE layers: pre-LN softmax attention, exact-GELU MLP), written out
    functionally on the official parameter names."""
    import torch.nn.functional as F

    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    def ln(x, name):
        return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], eps)

    x = lin(tokens, "decoder_embed")
    x = torch.cat([sd["trainable_cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd["decoder_pos_embed"]
    b, n, c = x.shape
    i = 0
    while f"decoder_layers.{i}.layernorm_before.weight" in sd:
        p = f"decoder_layers.{i}"
        h = ln(x, p + ".layernorm_before")
        q, k, v = (lin(h, f"{p}.attention.attention.{m}").reshape(b, n, heads, c // heads).transpose(1, 2)
                   for m in ("query", "key", "value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(b, n, c), p + ".attention.output.dense")
        x = x + lin(F.gelu(lin(ln(x, p + ".layernorm_after"), p + ".intermediate.dense")), p + ".output.dense")
        i += 1
    x = lin(ln(x, "decoder_norm"), "decoder_pred")[:, 1:]
    x = x.reshape(b, grid, grid, patch, patch, 3)  # MAE unpatchify
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, 3, grid * patch, grid * patch)


def test_official_rae_decoder_and_stats_load(tmp_path):
    import json

    folder = _dinov2_folder(tmp_path)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]}))
    sd, stats = _official_rae_parts(tmp_path)
    tok = RAETokenizer.from_official(folder, tmp_path / "dec", tmp_path / "model.pt", tmp_path / "stat.pt",
                                     encoder_input_size=14, decoder_patch_size=4)
    assert tok.image_mean.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])  # from the processor config
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
    with torch.no_grad():
        raw = tok.raw_latents(x)
        z = tok.encode(x)
        # official normalisation: (z - mean) / sqrt(var + 1e-5)
        torch.testing.assert_close(z, (raw - stats["mean"]) / (stats["var"] + 1e-5).sqrt(), rtol=1e-5, atol=1e-5)
        tokens = (z * (stats["var"] + 1e-5).sqrt() + stats["mean"]).flatten(2).transpose(1, 2)
        ref01 = _reference_decode(sd, tokens, heads=4, patch=4, grid=2) * std + mean  # official decode: [0, 1] images
        out = tok.decode(z)
        assert out.shape == (2, 3, 8, 8)
        assert ((out - (ref01 * 2 - 1)).abs().max() / ref01.abs().max()) < 1e-4
    # a stage-1 training checkpoint ({"ema": RAE state dict}) loads too; the converter writes an mgen folder
    torch.save({"model": {f"decoder.{k}": v for k, v in sd.items()}, "ema": {f"decoder.{k}": v for k, v in sd.items()}},
               tmp_path / "ep-0000001.pt")
    from mgen.cli import main

    assert main(["convert", "rae", str(tmp_path / "ep-0000001.pt"), str(tmp_path / "out"), "--opt", f"encoder={folder}",
                 "--opt", f"decoder_config={tmp_path / 'dec'}", "--opt", f"stats={tmp_path / 'stat.pt'}",
                 "--opt", "encoder_input_size=14", "--opt", "decoder_patch_size=4"]) == 0
    back = RAETokenizer.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), z, rtol=0, atol=0)
        torch.testing.assert_close(back.decode(z), out, rtol=0, atol=0)
    assert main(["convert", "rae", str(tmp_path / "model.pt"), str(tmp_path / "o2")]) == 2  # encoder/config missing
    bad = dict(sd)
    bad["decoder_layers.0.intermediate.dense.weight"] = torch.full_like(bad["decoder_layers.0.intermediate.dense.weight"], float("nan"))
    with pytest.raises(WeightsError, match="NaN"):
        RAETokenizer.from_official(folder, tmp_path / "dec", bad, encoder_input_size=14, decoder_patch_size=4)
    with pytest.raises(WeightsError, match="sin-cos"):  # a 16-token table for a 2x2 grid: wrong encoder_input_size
        RAETokenizer.from_official(folder, tmp_path / "dec", tmp_path / "model.pt", encoder_input_size=28, decoder_patch_size=4)
