"""Reduced precision for DiT and RAE-DiT (issue 15, item 2) on tiny models: ``.to(torch.bfloat16)`` gives a
working model whose conditioning path stays float32 (values not rounded through 16 bits), the DDPM/DDIM and
flow samplers keep x_t in float32 and return float32, the same seed gives the same sample, and bf16 samples
stay close to the float32 ones."""

from __future__ import annotations

import pytest
import torch

from mgen.models.dit import DiT
from mgen.models.lightningdit import LightningDiT
from mgen.samplers.ddpm import DDPMSampler
from mgen.samplers.flow import FlowSampler

DIT = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10)
LDIT = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10,
            head_depth=1, head_hidden_size=48, head_num_heads=3, use_qknorm=True)


def randomize(model, seed: int = 0, std: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def dtypes(model) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in list(model.named_parameters()) + list(model.named_buffers())}


def test_dit_bf16_keeps_the_conditioning_path_float32():
    ref = randomize(DiT(**DIT, per_block_embedders=True))
    low = randomize(DiT(**DIT, per_block_embedders=True)).to(torch.bfloat16)
    kinds = dtypes(low)
    fp32 = sorted(k for k, d in kinds.items() if d == torch.float32)
    assert all(d in (torch.float32, torch.bfloat16) for d in kinds.values())
    for k in fp32:
        assert any(p in k.split(".") for p in ("t_embedder", "y_embedder", "block_t_embedders", "block_y_embedders",
                                               "adaLN_modulation", "pos_embed")), k
    assert {"pos_embed", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight", "blocks.1.adaLN_modulation.1.weight",
            "final_layer.adaLN_modulation.1.bias", "block_t_embedders.0.mlp.2.weight"} <= set(fp32)
    assert kinds["blocks.0.attn.qkv.weight"] == kinds["final_layer.linear.weight"] == torch.bfloat16
    assert low.dtype == torch.bfloat16
    sd_ref, sd_low = ref.state_dict(), low.state_dict()
    for k in fp32:  # the float32 parts are the float32 values, not bf16-rounded copies
        assert torch.equal(sd_low[k], sd_ref[k]), k
    # every route to 16 bits keeps them: .bfloat16(), .half(), .to(dtype=...), and back with .float()
    assert randomize(DiT(**DIT)).bfloat16().t_embedder.mlp[0].weight.dtype == torch.float32
    assert randomize(DiT(**DIT)).half().blocks[0].adaLN_modulation[1].weight.dtype == torch.float32
    assert randomize(DiT(**DIT)).to(dtype=torch.float16).x_embedder.proj.weight.dtype == torch.float16
    assert low.float().dtype == torch.float32 and all(d == torch.float32 for d in dtypes(low).values())


def test_lightningdit_bf16_float32_parts():
    low = randomize(LightningDiT(**LDIT)).to(torch.bfloat16)
    kinds = dtypes(low)
    assert kinds["t_embedder.W"] == kinds["t_embedder.mlp.0.weight"] == kinds["y_embedder.embedding_table.weight"] == torch.float32
    assert kinds["pos_embed"] == kinds["rope.cos"] == kinds["head_rope.sin"] == torch.float32
    assert kinds["blocks.0.adaLN_modulation.1.weight"] == kinds["blocks.1.adaLN_modulation.1.bias"] == torch.float32  # trunk
    assert kinds["blocks.2.adaLN_modulation.1.weight"] == torch.bfloat16  # the DDT head's per-token modulation
    assert kinds["final_layer.adaLN_modulation.1.weight"] == torch.bfloat16  # per token too, with a head
    assert kinds["blocks.2.mlp.w12.weight"] == kinds["s_projector.weight"] == torch.bfloat16
    plain = randomize(LightningDiT(**{**LDIT, "head_depth": 0})).to(torch.bfloat16)
    assert plain.final_layer.adaLN_modulation[1].weight.dtype == torch.float32


@pytest.mark.parametrize("cls,arch,t", [(DiT, DIT, [3.0, 500.0, 999.0]), (LightningDiT, LDIT, [0.05, 0.5, 0.97]),
                                        (LightningDiT, {**LDIT, "head_depth": 0}, [0.05, 0.5, 0.97])],
                         ids=["dit", "dit-dh", "lightningdit"])
def test_forward_bf16_close_to_fp32(cls, arch, t):
    ref = randomize(cls(**arch), std=0.1)
    low = randomize(cls(**arch), std=0.1).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 4, 4, generator=g)
    tt, y = torch.tensor(t), torch.tensor([1, 5, 10])
    with torch.no_grad():
        want = ref(x, tt, y)
        got = low(x, tt, y)  # float32 input: the model casts it
        assert torch.equal(got, low(x.bfloat16(), tt, y))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    err = (got.float() - want).abs().max().item()
    assert err < 0.03 * want.abs().max().item() + 1e-3, err


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_ddpm_sampler_bf16(method):
    ref = randomize(DiT(**DIT), std=0.03)
    low = randomize(DiT(**DIT), std=0.03).to(torch.bfloat16)
    s = DDPMSampler(num_inference_steps=6, guidance_scale=2.0, method=method, clip_sample=True)
    labels = [1, 2, 3]
    want = s.sample(ref, labels, generator=torch.Generator().manual_seed(7))
    got = s.sample(low, labels, generator=torch.Generator().manual_seed(7))
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert torch.equal(got, s.sample(low, labels, generator=torch.Generator().manual_seed(7)))  # same seed, same sample
    assert not torch.equal(got, s.sample(low, labels, generator=torch.Generator().manual_seed(8)))
    # the initial noise is float32 whatever the model dtype, so fp32 and bf16 start from the same x_T; bf16's
    # rounding (~0.4%) is amplified by 1/sqrt(alpha-bar) in x_0 at high noise (measured: mean 0.1% / 0.8% of the
    # mean |x|, max 1.6% / 6.7% for DDPM / DDIM on this untrained model)
    diff = (got - want).abs()
    assert diff.mean().item() < 0.02 * want.abs().mean().item(), diff.mean().item()
    assert diff.max().item() < 0.1 * want.abs().max().item() + 1e-2, diff.max().item()
    states = []
    s.sample(low, labels, generator=torch.Generator().manual_seed(7), callback=lambda i, t, st: states.append(st["latents"]))
    assert len(states) == s.total_steps and all(v.dtype == torch.float32 for v in states)
    # the guidance arithmetic is float32 too
    x = torch.randn(2, 4, 4, 4)
    out = low.forward_with_cfg(torch.cat([x, x]), torch.full((4,), 400.0), torch.tensor([1, 2, 10, 10]), 3.0)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("arch", [LDIT, {**LDIT, "head_depth": 0}], ids=["dit-dh", "lightningdit"])
def test_flow_sampler_bf16(arch):
    ref = randomize(LightningDiT(**arch), std=0.1)
    low = randomize(LightningDiT(**arch), std=0.1).to(torch.bfloat16)
    s = FlowSampler(num_inference_steps=5, method="heun", guidance_scale=2.0, guidance_interval=(0.1, 0.9))
    labels = [0, 4, 9]
    want = s.sample(ref, labels, generator=torch.Generator().manual_seed(3))
    got = s.sample(low, labels, generator=torch.Generator().manual_seed(3))
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert torch.equal(got, s.sample(low, labels, generator=torch.Generator().manual_seed(3)))
    err = (got - want).abs().max().item()
    assert err < 0.05 * want.abs().max().item() + 1e-2, err
    seen = []
    s.sample(low, labels, generator=torch.Generator().manual_seed(3), callback=lambda i, t, st: seen.append(st["latents"].dtype))
    assert seen == [torch.float32] * s.total_steps


def test_pipeline_style_cast_and_shipped_bf16():
    """``from_pretrained(name, torch_dtype=torch.bfloat16)`` of the shipped digits models samples in bf16."""
    from mgen.hub import package_weights_dir

    if not (package_weights_dir() / "dit-digits.safetensors").exists():
        pytest.skip("dit-digits weights are not shipped in this checkout")
    model = DiT.from_pretrained("dit-digits", torch_dtype=torch.bfloat16)
    s = DDPMSampler(num_inference_steps=4, guidance_scale=4.0)
    out = s.sample(model, [1, 2], generator=torch.Generator().manual_seed(0))
    ref = s.sample(DiT.from_pretrained("dit-digits"), [1, 2], generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max().item() < 0.1 * ref.abs().max().item()
