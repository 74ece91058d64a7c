"""MAR model + diffusion-loss head: shapes, masking semantics, official checkpoint formats, diffusion math."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from mgen.errors import WeightsError
from mgen.models.diffloss import GaussianDiffusion, cosine_betas, space_timesteps
from mgen.models.mar import MAR, MARConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TINY = dict(img_size=16, vae_stride=4, patch_size=1, vae_embed_dim=4, encoder_embed_dim=32, encoder_depth=1,
            encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2, class_num=5,
            buffer_size=2, diffloss_d=2, diffloss_w=32, num_sampling_steps=10, diffusion_batch_mul=2)


def tiny_model(seed: int = 0) -> MAR:
    torch.manual_seed(seed)
    m = MAR(**TINY)
    with torch.no_grad():  # randomise the zero-initialised parts too, so every parameter matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def random_mask(b: int, l: int, n: int, g: torch.Generator) -> torch.Tensor:
    order = torch.rand(b, l, generator=g).argsort(1)
    return torch.zeros(b, l).scatter_(1, order[:, :n], 1.0)


def test_condition_and_denoise_shapes():
    m = tiny_model()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 16, 4, generator=g)
    z = m.condition(tokens, random_mask(3, 16, 5, g), torch.tensor([0, 1, 4]))
    assert z.shape == (3, 16, 32)
    out = m.denoise(torch.randn(7, 4), torch.randint(0, 1000, (7,)), torch.randn(7, 32))
    assert out.shape == (7, 8)
    assert not m.training


def test_masked_tokens_are_dropped_and_rows_independent():
    m = tiny_model()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(4, 16, 4, generator=g)
    mask = random_mask(4, 16, 9, g)
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        z = m.condition(tokens, mask, labels)
        # values at masked positions never reach the transformer (MAE-style dropping)
        poked = torch.where(mask.bool()[..., None], torch.randn_like(tokens) * 10, tokens)
        assert torch.allclose(m.condition(poked, mask, labels), z, atol=1e-5)
        # visible tokens do matter
        vis = (~mask.bool()).nonzero()[0]
        changed = tokens.clone()
        changed[vis[0], vis[1]] += 1.0
        assert not torch.allclose(m.condition(changed, mask, labels)[vis[0]], z[vis[0]], atol=1e-4)
        # each row is computed on its own
        for i in range(4):
            zi = m.condition(tokens[i:i + 1], mask[i:i + 1], labels[i:i + 1])
            assert torch.allclose(zi[0], z[i], atol=1e-5)
        # the unconditional branch is the fake latent
        zu = m.condition(tokens, mask, None)
        zd = m.condition(tokens, mask, labels, drop=torch.ones(4, dtype=torch.bool))
        assert torch.allclose(zu, zd, atol=1e-6)
        assert not torch.allclose(zu, z, atol=1e-4)
        # bool and float masks agree
        assert torch.allclose(m.condition(tokens, mask.bool(), labels), z)


def test_unequal_mask_counts_rejected():
    m = tiny_model()
    mask = torch.zeros(2, 16)
    mask[0, :3] = 1
    with pytest.raises(ValueError):
        m.condition(torch.zeros(2, 16, 4), mask, torch.tensor([0, 1]))


def _args(**over) -> argparse.Namespace:
    base = dict(model="mar_tiny", img_size=16, vae_stride=4, patch_size=1, vae_embed_dim=4, encoder_num_heads=2,
                decoder_num_heads=2, class_num=5, buffer_size=2, diffloss_d=2, diffloss_w=32, num_sampling_steps="10",
                diffusion_batch_mul=2, mask_ratio_min=0.7, label_drop_prob=0.1, attn_dropout=0.1, proj_dropout=0.1,
                grad_checkpointing=False, batch_size=4, epochs=1, lr=None, blr=1e-4, ema_rate=0.9999, temperature=1.0)
    base.update(over)
    return argparse.Namespace(**base)


def test_official_checkpoint_ema_and_model(tmp_path):
    model, ema = tiny_model(0), tiny_model(1)
    path = tmp_path / "checkpoint-last.pth"
    # main_mar.py / util.misc.save_model layout: full state dicts under 'model' and 'model_ema'
    torch.save({"model": model.state_dict(), "model_ema": ema.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "epoch": 3, "scaler": {"scale": 65536.0}, "args": _args()}, path)
    loaded = MAR.from_pretrained(path)  # config from args + shapes
    assert not loaded.training
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ema.state_dict()[k]), k
    raw = MAR.from_pretrained(path, config=TINY, ema=False)
    for k, v in raw.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    g = torch.Generator().manual_seed(2)
    tokens, mask = torch.randn(2, 16, 4, generator=g), random_mask(2, 16, 6, g)
    with torch.no_grad():
        assert torch.allclose(loaded.condition(tokens, mask, torch.tensor([1, 2])), ema.condition(tokens, mask, torch.tensor([1, 2])))


def test_official_checkpoint_for_another_config(tmp_path):
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": tiny_model().state_dict(), "model_ema": tiny_model().state_dict(), "args": _args(model="mar_base")}, path)
    with pytest.raises(WeightsError, match="another MAR config"):
        MAR.from_pretrained(path)
    path2 = tmp_path / "ckpt2.pth"
    torch.save({"model": tiny_model().state_dict(), "model_ema": tiny_model().state_dict(), "args": _args()}, path2)
    with pytest.raises(WeightsError, match="another MAR config"):
        MAR.from_pretrained(path2, config="mar-b")
    with pytest.raises(WeightsError, match="another MAR config"):
        MAR.from_pretrained(path2, config={**TINY, "diffloss_w": 64})


def test_safetensors_and_folder_round_trip(tmp_path):
    from safetensors.torch import save_file

    m = tiny_model(3)
    f = m.save_safetensors(tmp_path / "mar.safetensors")
    a = MAR.from_pretrained(f)  # config from the metadata
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(plain))
    b = MAR.from_pretrained(plain, config=TINY)
    m.save_pretrained(tmp_path / "folder")
    c = MAR.from_pretrained(tmp_path / "folder")
    for other in (a, b, c):
        assert not other.training
        for k, v in other.state_dict().items():
            assert torch.equal(v, m.state_dict()[k]), k
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError):
        MAR.from_pretrained(tmp_path / "bad.pth", config=TINY)


def test_config_presets_match_registry():
    from mgen.models.mar import config_from_args, resolve_config

    for name, preset in (("mar-b", "mar_base"), ("mar-l", "mar_large"), ("mar-h", "mar_huge")):
        cfg = resolve_config(name)
        off = config_from_args(argparse.Namespace(model=preset, diffloss_d=cfg.diffloss_d, diffloss_w=cfg.diffloss_w))
        for k in ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "decoder_depth", "decoder_num_heads"):
            assert getattr(cfg, k) == getattr(off, k), (name, k)
        assert cfg.seq_len == 256 and cfg.token_embed_dim == 16 and cfg.buffer_size == 64
    assert (resolve_config("mar-b").diffloss_d, resolve_config("mar-l").diffloss_w, resolve_config("mar-h").diffloss_d) == (6, 1280, 12)
    assert MARConfig.from_mapping(TINY).seq_len == 16


def test_cosine_schedule_matches_diffusers_and_respacing():
    from diffusers import DDPMScheduler

    ours = cosine_betas(1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").betas.double().numpy()
    assert np.allclose(ours, ref, rtol=1e-5, atol=1e-7)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace")
    sched.set_timesteps(100)
    assert space_timesteps(1000, "100") == sorted(int(t) for t in sched.timesteps)
    # IDDPM docstring example: 300 steps in sections of 10, 15, 20
    steps = space_timesteps(300, [10, 15, 20])
    assert len(steps) == 45 and steps[0] == 0 and steps[9] == 99 and steps[10] == 100 and steps[-1] == 299
    lin = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02).betas.double().numpy()
    assert np.allclose(GaussianDiffusion(None, noise_schedule="linear").betas, lin, rtol=1e-5, atol=1e-8)
    d = GaussianDiffusion(100)
    assert d.num_timesteps == 100 and d.timestep_map[0] == 0 and d.timestep_map[-1] == 999
    # respaced cumulative products equal the base ones at the kept steps
    base = np.cumprod(1 - ours)
    assert np.allclose(d.alphas_cumprod, base[d.timestep_map])


def test_training_loss_and_mask_ratio():
    from scipy import stats

    m = tiny_model().train()
    g = torch.Generator().manual_seed(0)
    r = np.array([m.sample_mask_ratio(g) for _ in range(4000)])
    assert r.min() >= 0.7 and r.max() <= 1.0
    ref = stats.truncnorm((0.7 - 1.0) / 0.25, 0, loc=1.0, scale=0.25)
    assert abs(r.mean() - ref.mean()) < 0.005 and abs(r.std() - ref.std()) < 0.005
    latents = torch.randn(4, 4, 4, 4)
    loss = m(latents, torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert m.diffloss.net.final_layer.linear.weight.grad.abs().sum() > 0
    assert m.encoder_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # same generator state -> same loss (all randomness is explicit; dropout off in eval)
    m.eval()
    l1 = m(latents, torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(5))
    l2 = m(latents, torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(5))
    assert torch.equal(l1, l2)


def test_head_sampling_with_exact_noise_is_reverse_diffusion():
    """With zero temperature and a denoiser that predicts ε exactly for x_0 = c, sampling returns c."""
    d = GaussianDiffusion(20)
    x0 = torch.tensor([[0.3, -0.2], [1.0, 0.5]])

    class Oracle(torch.nn.Module):
        def embed_condition(self, c):
            return c

        def time_embed(self, t):
            return t.reshape(-1, 1)

        def forward_with_embeddings(self, x, t_emb, c):
            ac = torch.as_tensor(np.cumprod(1 - cosine_betas(1000)), dtype=torch.float32)[t_emb.reshape(-1).long()]
            eps = (x - ac.sqrt()[:, None] * c) / (1 - ac).sqrt()[:, None]
            return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    out = d.sample(Oracle(), x0, torch.randn(2, 2, generator=torch.Generator().manual_seed(0)), temperature=1e-9)
    assert torch.allclose(out, x0, atol=1e-3)
