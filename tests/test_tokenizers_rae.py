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
