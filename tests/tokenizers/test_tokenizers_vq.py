"""VQTokenizer: diffusers VQModel parity, the taming / MaskGIT VQGAN checkpoint layout, the codebook, bad inputs."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from mgen.errors import UserError, WeightsError
from mgen.tokenizers.vq import VectorQuantizer, VQTokenizer
from tokenizers_ldm_reference import f_decode, f_encode, ldm_state_dict

torch.set_num_threads(1)

TINY = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[32, 64],
            layers_per_block=1, latent_channels=8, num_vq_embeddings=64, vq_embed_dim=4, norm_num_groups=32)


def _diffusers_folder(tmp_path):
    from diffusers import VQModel

    torch.manual_seed(0)
    ref = VQModel(**TINY).eval()
    with torch.no_grad():
        ref.quantize.embedding.weight.normal_()
        for n, p in ref.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "vq")
    return ref, tmp_path / "vq"


def test_indices_equal_diffusers_quantizer(tmp_path):
    ref, folder = _diffusers_folder(tmp_path)
    tok = VQTokenizer.from_pretrained(folder)
    assert tok.codebook_size == 64 and tok.stride == 2
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        idx = tok.encode(x)
        h = ref.quant_conv(ref.encoder(x))
        _, _, (_, _, ref_idx) = ref.quantize(h)
        assert idx.dtype == torch.long and idx.shape == (3, 8, 8)
        assert torch.equal(idx.flatten(), ref_idx.flatten())
        assert idx.unique().numel() > 1
        torch.testing.assert_close(tok.decode(idx), ref.decode(h).sample, rtol=1e-4, atol=1e-5)


def test_round_trip_keeps_quantizer_options(tmp_path):
    _, folder = _diffusers_folder(tmp_path)
    tok = VQTokenizer.from_pretrained(folder)
    tok.quantizer.l2_norm = True
    tok.save_pretrained(tmp_path / "ours")
    tok.save_file(tmp_path / "one.safetensors")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    for p in (tmp_path / "ours", tmp_path / "one.safetensors"):
        back = VQTokenizer.from_pretrained(p)
        assert back.quantizer.l2_norm
        with torch.no_grad():
            assert torch.equal(back.encode(x), tok.encode(x))


def _taming_checkpoint(tmp_path, lightning_global: bool = False):
    # taming-transformers VQGAN layout (valeoai/Maskgit-pytorch v1 last.ckpt): double_z False, attention in the
    # lowest-resolution level of both encoder and decoder, quantize.embedding, {"state_dict": ...} plus loss.* keys.
    g = torch.Generator().manual_seed(0)
    sd = ldm_state_dict(32, (1, 1, 2), 1, 8, (2,), g, dec_attn_levels=(2,), double_z=False, embed_dim=4, codebook=32)
    sd["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4, generator=g)
    ckpt = {"state_dict": sd, "epoch": 3, "global_step": 10}
    path = tmp_path / "last.ckpt"
    if lightning_global:  # a callback class pickled next to the weights, as Lightning does
        mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
        cls = type("ModelCheckpoint", (), {"__module__": mod.__name__})
        mod.ModelCheckpoint = cls
        for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules[mod.__name__] = mod
        ckpt["callbacks"] = {cls: {"best_model_score": torch.tensor(1.0)}}
        try:
            torch.save(ckpt, path)
        finally:
            for name in (mod.__name__, "pytorch_lightning.callbacks", "pytorch_lightning"):
                sys.modules.pop(name, None)
    else:
        torch.save(ckpt, path)
    return sd, path


@pytest.mark.parametrize("lightning_global", [False, True])
def test_taming_maskgit_checkpoint_matches_independent_evaluation(tmp_path, lightning_global):
    sd, path = _taming_checkpoint(tmp_path, lightning_global)
    tok = VQTokenizer.from_pretrained(path)
    assert tok.codebook_size == 32 and tok.stride == 4
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z = f_encode(sd, x, 3, 1)  # (2, 4, 4, 4) pre-quantisation latents
        e = sd["quantize.embedding.weight"]
        flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
        d = (flat ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * flat @ e.t()  # taming's distance
        expect = d.argmin(1).reshape(2, 4, 4)
        idx = tok.encode(x)
        assert torch.equal(idx, expect)
        ref = f_decode(sd, e[expect].permute(0, 3, 1, 2), 3, 1)
        out = tok.decode(idx)
        assert ((out - ref).abs().max() / ref.abs().max()) < 1e-4


def test_convert_cli_and_refusals(tmp_path):
    from mgen.cli import main

    _, path = _taming_checkpoint(tmp_path)
    assert main(["convert", "maskgit-vqgan", str(path), str(tmp_path / "out")]) == 0
    a, b = VQTokenizer.from_pretrained(path), VQTokenizer.from_pretrained(tmp_path / "out")
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a.encode(x), b.encode(x))
    (tmp_path / "trunc.ckpt").write_bytes(path.read_bytes()[:1000])
    assert main(["convert", "maskgit-vqgan", str(tmp_path / "trunc.ckpt"), str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()
    evil = {"state_dict": {}, "x": types.SimpleNamespace(a=1)}  # an arbitrary pickled object: refused
    torch.save(evil, tmp_path / "evil.ckpt")
    with pytest.raises(WeightsError, match="refused"):
        VQTokenizer.from_pretrained(tmp_path / "evil.ckpt")


def test_bad_inputs(tmp_path):
    _, folder = _diffusers_folder(tmp_path)
    tok = VQTokenizer.from_pretrained(folder)
    for bad, msg in [(torch.zeros(1, 4, 8, 8), "channels"), (torch.zeros(1, 3, 7, 8), "multiples"),
                     (torch.full((1, 3, 8, 8), float("nan")), "NaN"), (torch.zeros(3, 8, 8), "shape")]:
        with pytest.raises(ValueError, match=msg):
            tok.encode(bad)
    with pytest.raises(ValueError, match="in \\[0, 64\\)"):
        tok.decode(torch.full((1, 2, 2), 64))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(torch.zeros(1, 2, 2))


# ---- the codebook ----

def test_quantizer_straight_through_and_losses():
    q = VectorQuantizer(16, 4, beta=0.25)
    q.eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    zq, loss, idx = q(z)
    e = q.embedding.weight
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(idx.flatten(), torch.cdist(flat, e.detach()).argmin(1))
    torch.testing.assert_close(zq.detach(), q.lookup(idx))
    mse = ((flat - e.detach()[idx.flatten()]) ** 2).mean()
    torch.testing.assert_close(loss, 1.25 * mse)  # codebook term + beta * commitment (same value, eq. 3)
    zq.sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through: d zq / d z = identity
    z.grad = None
    loss.backward()
    assert e.grad is not None and e.grad.abs().sum() > 0


def test_quantizer_l2_norm_factorised_codes():
    q = VectorQuantizer(8, 3, l2_norm=True).eval()
    z = torch.randn(1, 3, 2, 2) * 10
    zq, _, idx = q(z)
    assert torch.allclose(zq.norm(dim=1), torch.ones(1, 2, 2), atol=1e-5)
    cos = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 3), dim=-1) @ q.codes().t()
    assert torch.equal(idx.flatten(), cos.argmax(1))


def test_quantizer_ema_and_dead_code_restart_are_seeded():
    def run(seed):
        torch.manual_seed(0)
        q = VectorQuantizer(8, 2, ema=True, ema_decay=0.5, dead_threshold=0.6).train()
        with torch.no_grad():
            q.embedding.weight.copy_(torch.tensor([[5.0, 5.0]] + [[100.0 + i, 0.0] for i in range(7)]))
            q.embed_sum.copy_(q.embedding.weight)
        z = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3))
        q(z, torch.Generator().manual_seed(seed))
        return q, z

    q, z = run(1)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert not q.embedding.weight.requires_grad
    # all inputs went to code 0: it moved towards their mean; codes 1..7 were unused and restarted from inputs
    assert q.embedding.weight[0].sub(flat.mean(0)).norm() < torch.tensor([5.0, 5.0]).sub(flat.mean(0)).norm()
    for k in range(1, 8):
        assert (flat - q.embedding.weight[k]).norm(dim=1).min() < 1e-6
    q2, _ = run(1)
    q3, _ = run(2)
    assert torch.equal(q.embedding.weight, q2.embedding.weight)
    assert not torch.equal(q.embedding.weight, q3.embedding.weight)


def test_training_builder_smoke(tmp_path):
    from mgen.registry import parse_entry
    from mgen.train.tasks import build_training

    entry = parse_entry({"name": "vq-tiny", "family": "vq",
                         "arch": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8, "embed_dim": 4,
                                  "codebook_size": 16, "resolution": 8, "l2_norm": True, "ema": True,
                                  "dead_threshold": 0.01},
                         "train": {"image_size": 8, "batch_size": 8, "max_steps": 3, "lr": 1e-3, "progress": False}})
    trainer = build_training(entry, out_dir=str(tmp_path / "run"))
    record = trainer.train()
    assert record["step"] == 3 and torch.isfinite(torch.tensor(record["loss"]))
    tok = trainer.eval_model
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert tok.encode(x).shape == (2, 4, 4)
