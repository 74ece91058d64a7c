"""DiT and LightningDiT as diffusers ModelMixin + ConfigMixin components: ``X(**arch)`` / ``from_arch``,
``save_pretrained`` → ``from_pretrained`` round trips (diffusers' own folder layout), the component rule of
diffusers' pipeline loader, ``torch_dtype`` on every loading path, the older layouts, the shipped weights by
registry name, and ``looks_like`` family detection."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from mgen import registry
from mgen.errors import UserError, WeightsError
from mgen.models import dit as dit_mod
from mgen.models import lightningdit as ldit_mod
from mgen.models.dit import DiT, DiTConfig
from mgen.models.lightningdit import LightningDiT, LightningDiTConfig

DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)
LDIT = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10,
            head_depth=1, head_hidden_size=48, head_num_heads=3, use_qknorm=True)
# what diffusers' DiffusionPipeline passes to a ModelMixin component's from_pretrained
PIPELINE_KWARGS = dict(low_cpu_mem_usage=True, device_map=None, max_memory=None, offload_folder=None,
                       offload_state_dict=False, variant=None, use_safetensors=None)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def dit_inputs(b: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 4, 8, 8, generator=g), torch.tensor([0.0, 417.0, 999.0][:b]), torch.tensor([0, 7, 10][:b])


def ldit_inputs(b: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 4, 4, 4, generator=g), torch.tensor([0.1, 0.5, 0.9][:b]), torch.tensor([0, 7, 10][:b])


CASES = [(DiT, DIT, dit_inputs), (LightningDiT, LDIT, ldit_inputs), (LightningDiT, {**LDIT, "head_depth": 0}, ldit_inputs)]
IDS = ["dit", "dit-dh", "lightningdit"]


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("cls,arch,inputs", CASES, ids=IDS)
def test_save_pretrained_round_trip(tmp_path, cls, arch, inputs):
    from diffusers.configuration_utils import ConfigMixin
    from diffusers.models.modeling_utils import ModelMixin

    model = randomize(cls(**arch))
    assert isinstance(model, ModelMixin) and isinstance(model, ConfigMixin)
    assert model.config.hidden_size == 32 and dict(model.config)["num_classes"] == 10
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["_class_name"] == cls.__name__ and {k: meta[k] for k in arch} == arch
    again = cls.from_pretrained(tmp_path / "m")
    assert not again.training and same_state(model, again)
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(again(x, t, y), model(x, t, y))
    # diffusers' component rule: import_module(module).<class>.from_pretrained(folder, **loader kwargs)
    klass = getattr(importlib.import_module(cls.__module__), cls.__name__)
    comp = klass.from_pretrained(tmp_path / "m", torch_dtype=torch.float32, **PIPELINE_KWARGS)
    assert same_state(model, comp)
    assert same_state(model, cls.from_pretrained(tmp_path, subfolder="m"))


@pytest.mark.parametrize("cls,arch,inputs", CASES, ids=IDS)
def test_torch_dtype_on_own_folders(tmp_path, cls, arch, inputs):
    model = randomize(cls(**arch))
    model.save_pretrained(tmp_path / "m")
    low = cls.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16, **PIPELINE_KWARGS)
    assert low.dtype == torch.bfloat16 and not low.training
    for name, t in low.state_dict().items():
        want = torch.float32 if low.keeps_fp32(name) else torch.bfloat16
        assert t.dtype == want, name
    assert cls.from_pretrained(tmp_path / "m", dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(UserError, match="torch_dtype"):
        cls.from_pretrained(tmp_path / "m", config=None, torch_dtype="bf16")


def test_dit_arch_fields_and_from_arch():
    entry = registry.get("dit-digits")
    m = DiT(**entry.arch)
    assert m.arch == DiTConfig.from_mapping(entry.arch) and m.config.depth == entry.arch["depth"]
    assert m.out_channels == 2 * m.in_channels  # learn_sigma
    assert isinstance(DiT.from_arch(entry.arch), DiT)
    with pytest.raises(UserError, match="unknown DiT settings"):
        DiT.from_arch({**DIT, "heads": 3})
    with pytest.raises(UserError, match="divisible"):
        DiT.from_arch({**DIT, "input_size": 9})
    with pytest.raises(UserError, match="divisible"):
        DiT(**{**DIT, "hidden_size": 30})
    old = DiT(DiTConfig(**DIT))  # the older DiT(DiTConfig) form still builds the same model
    assert dict(old.config)["hidden_size"] == 32 and not isinstance(old.config.input_size, DiTConfig)
    json.dumps(dict(old.config))
    with pytest.raises(UserError, match="unknown LightningDiT settings"):
        LightningDiT.from_arch({**LDIT, "heads": 3})
    e2 = registry.get("rae-dit-digits")
    assert LightningDiT.from_arch(e2.arch).arch == LightningDiTConfig.from_mapping(e2.arch)
    assert LightningDiT(LightningDiTConfig(**LDIT)).config.head_hidden_size == 48


def test_config_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(DiT(**DIT).state_dict(), path)
    with pytest.raises(UserError, match="unknown DiT settings"):
        DiT.from_pretrained(path, config="rae-dit-digits")
    LightningDiT(**LDIT).save_pretrained(tmp_path / "l")
    with pytest.raises(WeightsError, match="LightningDiT, not a DiT"):
        DiT.from_pretrained(tmp_path / "l")
    DiT(**DIT).save_pretrained(tmp_path / "d")
    with pytest.raises(WeightsError, match="DiT, not a LightningDiT"):
        LightningDiT.from_pretrained(tmp_path / "d")


@pytest.mark.parametrize("cls,arch,inputs", CASES[:2], ids=IDS[:2])
def test_old_mgen_folder_layout_still_loads(tmp_path, cls, arch, inputs):
    import dataclasses

    from mgen.hub import save_safetensors

    model = randomize(cls(**arch))
    d = tmp_path / "old"
    d.mkdir()
    save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(dataclasses.asdict(model.arch)))
    again = cls.from_pretrained(d, torch_dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16
    assert same_state(model, cls.from_pretrained(d))


def test_official_and_diffusers_files_honour_torch_dtype(tmp_path):
    from diffusers import DiTTransformer2DModel

    model = randomize(DiT(**DIT))
    torch.save(model.state_dict(), tmp_path / "DiT-tiny.pt")
    low = DiT.from_pretrained(tmp_path / "DiT-tiny.pt", config=DIT, torch_dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16 and low.t_embedder.mlp[0].weight.dtype == torch.float32
    assert torch.equal(low.t_embedder.mlp[0].weight, model.t_embedder.mlp[0].weight)  # not rounded through bf16
    ref = randomize(DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8,
                                          num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10))
    ref.save_pretrained(tmp_path / "hf")
    hf = DiT.from_pretrained(tmp_path / "hf", torch_dtype=torch.bfloat16, **PIPELINE_KWARGS)
    assert hf.dtype == torch.bfloat16 and hf.pos_embed.dtype == torch.float32
    x, t, y = dit_inputs()
    with torch.no_grad():
        want = ref(x, timestep=t, class_labels=y).sample
        assert (DiT.from_pretrained(tmp_path / "hf")(x, t, y) - want).abs().max().item() < 1e-5
        low_out = hf(x, t, y)
    assert low_out.dtype == torch.bfloat16
    assert (low_out.float() - want).abs().max().item() < 0.05 * want.abs().max().item() + 1e-2
    # the official contract: DiT.from_pretrained(path, config="dit-xl-2")(x, t, y) — here the registry name's
    # arch drives the build, so a tiny file must be refused with a clear message, not half-loaded
    with pytest.raises(WeightsError, match="does not match the config"):
        DiT.from_pretrained(tmp_path / "DiT-tiny.pt", config="dit-xl-2")


@pytest.mark.parametrize("name,cls", [("dit-digits", DiT), ("rae-dit-digits", LightningDiT)])
def test_shipped_weights_by_registry_name(tmp_path, name, cls):
    from mgen.hub import package_weights_dir

    if not (package_weights_dir() / f"{name}.safetensors").exists():
        pytest.skip(f"{name} weights are not shipped in this checkout")
    model = cls.from_pretrained(name)
    entry = registry.get(name)
    assert not model.training and {k: model.config[k] for k in entry.arch} == dict(entry.arch)
    model.save_pretrained(tmp_path / name)
    again = cls.from_pretrained(tmp_path / name)
    assert same_state(model, again)
    c = model.arch
    x = torch.randn(2, c.in_channels, c.input_size, c.input_size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10.0, 500.0]) if cls is DiT else torch.tensor([0.1, 0.7])
    y = torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.equal(again(x, t, y), model(x, t, y))
    low = cls.from_pretrained(name, torch_dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16 and low.t_embedder.mlp[0].weight.dtype == torch.float32


def test_looks_like():
    d = DiT(**DIT).state_dict()
    l_dh = LightningDiT(**LDIT).state_dict()
    l_plain = LightningDiT(**{**LDIT, "head_depth": 0, "use_swiglu": False, "use_rmsnorm": False}).state_dict()
    assert dit_mod.looks_like(d) and dit_mod.looks_like({"ema": d, "opt": {}})
    assert dit_mod.looks_like({f"module.{k}": v for k, v in d.items()})
    assert not dit_mod.looks_like(l_dh) and not dit_mod.looks_like(l_plain)
    assert ldit_mod.looks_like(l_dh) and ldit_mod.looks_like(l_plain) and ldit_mod.looks_like({"model": l_dh})
    assert not ldit_mod.looks_like(d)
    from diffusers import DiTTransformer2DModel

    hf = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                               sample_size=4, patch_size=2, num_embeds_ada_norm=10).state_dict()
    assert dit_mod.looks_like(hf) and not ldit_mod.looks_like(hf)
    assert not dit_mod.looks_like({"encoder.conv_in.weight": torch.zeros(1)})
