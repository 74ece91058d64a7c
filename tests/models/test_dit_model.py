"""DiT (Peebles & Xie 2023): loaders for the official .pt layout and diffusers folders, forward parity,
classifier-free guidance as the official ``forward_with_cfg``, configs and bad input."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mgen import registry
from mgen.errors import UserError, WeightsError
from mgen.models.dit import DiT, DiTConfig

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def randomize(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def inputs(b: int = 3, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, size, size, generator=g)
    t = torch.tensor([0.0, 417.0, 999.0, 3.5][:b])
    y = torch.tensor([0, 7, 10, 2][:b])  # 10 = the null class
    return x, t, y


def reference_forward(sd: dict[str, torch.Tensor], x, t, y, p: int, heads: int, learn_sigma: bool = True):
    """The DiT forward written out from the paper (§3.2, Fig. 3) on a raw official-layout state dict."""
    b, c, h, w = x.shape
    tok = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    d = tok.shape[-1]
    # MAE/DiT 2-D sin-cos table built with numpy: first half of the channels from the column index.
    gs = h // p
    gw, gh = np.meshgrid(np.arange(gs, dtype=np.float64), np.arange(gs, dtype=np.float64))

    def one_d(dim, pos):
        om = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = pos.reshape(-1)[:, None] * om[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    pos = np.concatenate([one_d(d // 2, gw), one_d(d // 2, gh)], axis=1)
    tok = tok + torch.from_numpy(pos).float()[None]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    tf = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    temb = F.linear(F.silu(F.linear(tf, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                    sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    cond = temb + sd["y_embedder.embedding_table.weight"][y]
    nblocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))

    def ln(v):
        return F.layer_norm(v, (d,), eps=1e-6)

    for i in range(nblocks):
        q = f"blocks.{i}."
        mod = F.linear(F.silu(cond), sd[q + "adaLN_modulation.1.weight"], sd[q + "adaLN_modulation.1.bias"])
        sh1, sc1, g1, sh2, sc2, g2 = [m[:, None] for m in mod.chunk(6, dim=1)]
        a = ln(tok) * (1 + sc1) + sh1
        qkv = F.linear(a, sd[q + "attn.qkv.weight"], sd[q + "attn.qkv.bias"]).reshape(b, -1, 3, heads, d // heads)
        qq, kk, vv = qkv.permute(2, 0, 3, 1, 4)
        att = ((qq @ kk.transpose(-1, -2)) / math.sqrt(d // heads)).softmax(-1) @ vv
        att = F.linear(att.transpose(1, 2).reshape(b, -1, d), sd[q + "attn.proj.weight"], sd[q + "attn.proj.bias"])
        tok = tok + g1 * att
        m = ln(tok) * (1 + sc2) + sh2
        m = F.linear(F.gelu(F.linear(m, sd[q + "mlp.fc1.weight"], sd[q + "mlp.fc1.bias"]), approximate="tanh"),
                     sd[q + "mlp.fc2.weight"], sd[q + "mlp.fc2.bias"])
        tok = tok + g2 * m
    mod = F.linear(F.silu(cond), sd["final_layer.adaLN_modulation.1.weight"], sd["final_layer.adaLN_modulation.1.bias"])
    sh, sc = [m[:, None] for m in mod.chunk(2, dim=1)]
    out = F.linear(ln(tok) * (1 + sc) + sh, sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    oc = 2 * c if learn_sigma else c
    out = out.reshape(b, gs, gs, p, p, oc).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(b, oc, h, w)


OFFICIAL_KEYS = [
    "x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
    "y_embedder.embedding_table.weight", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.1.attn.proj.bias",
    "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "blocks.1.adaLN_modulation.1.weight",
    "final_layer.adaLN_modulation.1.bias", "final_layer.linear.weight",
]


def test_official_layout_pt_round_trip_and_reference_forward(tmp_path):
    model = randomize(DiT(**TINY))
    sd = model.state_dict()
    for k in OFFICIAL_KEYS:
        assert k in sd, k
    assert sd["pos_embed"].shape == (1, 16, 32)
    assert sd["y_embedder.embedding_table.weight"].shape == (11, 32)
    path = tmp_path / "DiT-tiny.pt"
    torch.save({k: v.clone() for k, v in sd.items()}, path)  # a plain state dict, as the official release
    loaded = DiT.from_pretrained(path, config=TINY)
    x, t, y = inputs()
    with torch.no_grad():
        ours = loaded(x, t, y)
        ref = reference_forward(sd, x, t, y, p=2, heads=4)
    assert ours.shape == (3, 8, 8, 8)
    assert (ours - ref).abs().max().item() < 1e-4
    assert torch.equal(ours, model(x, t, y))
    # shapes alone give the config too (heads from the paper's sizes are not needed: TINY is passed above)
    with pytest.raises(UserError, match="num_heads"):
        DiT.from_pretrained(path)


def test_training_checkpoint_uses_ema(tmp_path):
    model = randomize(DiT(**TINY), seed=3)
    ema = randomize(DiT(**TINY), seed=4)
    path = tmp_path / "0001000.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": {}, "args": argparse.Namespace(model="DiT-S/2")}, path)
    loaded = DiT.from_pretrained(path, config=TINY)
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), ema(x, t, y))


def test_wrong_config_is_a_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(DiT(**TINY).state_dict(), path)
    with pytest.raises(WeightsError, match="does not match the config"):
        DiT.from_pretrained(path, config={**TINY, "hidden_size": 64})
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(2)}, bad)
    with pytest.raises(WeightsError):
        DiT.from_pretrained(bad, config=TINY)


def _tiny_diffusers(tmp_path, tie: bool = True, subfolder: bool = False):
    from diffusers import DiTTransformer2DModel

    ref = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    randomize(ref, std=0.2)
    if tie:  # a converted DiT has one embedder, copied into every block
        sd = ref.state_dict()
        for k in sd:
            if ".norm1.emb." in k and not k.startswith("transformer_blocks.0."):
                sd[k] = sd["transformer_blocks.0." + k.split(".", 2)[2]]
        ref.load_state_dict(sd)
    folder = tmp_path / ("pipe" if subfolder else "dit")
    ref.save_pretrained(folder / "transformer" if subfolder else folder)
    return ref, folder


@pytest.mark.parametrize("subfolder", [False, True])
def test_diffusers_folder_parity(tmp_path, subfolder):
    ref, folder = _tiny_diffusers(tmp_path, subfolder=subfolder)
    model = DiT.from_pretrained(folder)
    assert model.config.hidden_size == 32 and model.config.num_classes == 10 and model.config.learn_sigma
    x, t, y = inputs()
    with torch.no_grad():
        want = ref(x, timestep=t, class_labels=y).sample
        got = model(x, t, y)
    assert want.abs().max() > 0.1
    assert (want - got).abs().max().item() < 1e-5
    # the single weights file next to its config.json loads the same way
    file = (folder / "transformer" if subfolder else folder) / "diffusion_pytorch_model.safetensors"
    with torch.no_grad():
        assert torch.equal(DiT.from_pretrained(file)(x, t, y), got)


def test_diffusers_weights_without_config_json(tmp_path):
    import shutil

    ref, folder = _tiny_diffusers(tmp_path)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "diffusion_pytorch_model.safetensors", lone / "dit.safetensors")
    with pytest.raises(WeightsError, match="config"):
        DiT.from_pretrained(lone / "dit.safetensors")
    model = DiT.from_pretrained(lone / "dit.safetensors", config=TINY)  # diffusers conventions are kept
    x, t, y = inputs()
    with torch.no_grad():
        assert (ref(x, timestep=t, class_labels=y).sample - model(x, t, y)).abs().max().item() < 1e-5


def test_diffusers_untied_embedders_load_per_block(tmp_path):
    # a DiTTransformer2DModel initialised/trained in diffusers has one timestep/class embedder per block
    ref, folder = _tiny_diffusers(tmp_path, tie=False)
    model = DiT.from_pretrained(folder)
    assert model.config.per_block_embedders
    x, t, y = inputs()
    with torch.no_grad():
        want = ref(x, timestep=t, class_labels=y).sample
        got = model(x, t, y)
    assert (want - got).abs().max().item() < 1e-5
    model.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(DiT.from_pretrained(tmp_path / "again")(x, t, y), got)


def test_save_pretrained_round_trip(tmp_path):
    model = randomize(DiT(**TINY, learn_sigma=False))
    model.save_pretrained(tmp_path / "m")
    again = DiT.from_pretrained(tmp_path / "m")
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(again(x, t, y), model(x, t, y))
    assert again(x, t, y).shape == (3, 4, 8, 8)


def test_forward_with_cfg_guides_first_three_channels():
    model = randomize(DiT(**TINY))
    x, _, _ = inputs(2)
    xx = torch.cat([x, torch.randn_like(x)])  # the second half is ignored, as in the official code
    yy = torch.tensor([3, 5, 10, 10])
    tt = torch.full((4,), 250.0)
    with torch.no_grad():
        out = model.forward_with_cfg(xx, tt, yy, 4.0)
        raw = model(torch.cat([x, x]), tt, yy)
    cond, uncond = raw[:2], raw[2:]
    guided = uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3])
    assert torch.allclose(out[:2, :3], guided, atol=1e-6) and torch.allclose(out[2:, :3], guided, atol=1e-6)
    assert torch.equal(out[:2, 3:], cond[:, 3:]) and torch.equal(out[2:, 3:], uncond[:, 3:])
    with torch.no_grad():
        allch = model.forward_with_cfg(xx, tt, yy, 4.0, guidance_channels=None)
    assert torch.allclose(allch[:2, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]), atol=1e-6)


def test_bad_input_errors():
    model = DiT(**TINY)
    t = torch.zeros(2)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(UserError, match="channels"):
        model(torch.zeros(2, 3, 8, 8), t, y)
    with pytest.raises(UserError, match="divisible"):
        model(torch.zeros(2, 4, 7, 7), t, y)
    with pytest.raises(UserError, match="built for"):
        model(torch.zeros(2, 4, 16, 16), t, y)
    with pytest.raises(UserError, match="divisible"):
        DiTConfig.from_mapping({**TINY, "input_size": 9})
    with pytest.raises(UserError, match="unknown DiT settings"):
        DiTConfig.from_mapping({**TINY, "heads": 3})


def test_registry_configs_match_the_paper():
    # DiT paper Table 1 / 4: S 33M, B 130M, L 458M, XL 675M parameters (counted without allocating).
    want = {"s": 33.0, "b": 130.0, "l": 458.0, "xl": 675.0}
    names = [e.name for e in registry.list_models() if e.family == "dit" and e.name.count("-") == 2
             and e.name.split("-")[1] in want]
    assert len(names) >= 12
    for name in names:
        entry = registry.get(name)
        with torch.device("meta"):
            m = DiT(DiTConfig.from_mapping(entry.arch))
        n = sum(p.numel() for p in m.parameters()) / 1e6
        assert abs(n - want[name.split("-")[1]]) / want[name.split("-")[1]] < 0.01, (name, n)
        assert m.patch_size == int(name.split("-")[2])
