"""MaskGIT and ENAT as diffusers ``ModelMixin + ConfigMixin``: construction from an ``arch`` mapping,
``save_pretrained`` → ``from_pretrained`` round trips, every older format, ``torch_dtype`` on every path."""

from __future__ import annotations

import copy
import importlib
import json

import pytest
import torch

from mgen.errors import UserError
from mgen.hub import package_weights_dir, save_safetensors
from mgen.models import enat as enat_mod
from mgen.models import maskgit as maskgit_mod
from mgen.models.enat import ENAT
from mgen.models.maskgit import MaskGITTransformer, to_valeoai_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

MG = dict(grid_size=4, hidden_dim=32, depth=2, heads=4, mlp_dim=64, codebook_size=16, mask_token_id=16,
          num_classes=10, dropout=0.1)
EN = dict(grid_size=4, hidden_dim=32, enc_depth=2, dec_depth=1, heads=4, codebook_size=16, num_classes=10)


def _perturbed(m: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # move off the init (ENAT's adaLN starts at zero) so that every tensor matters
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def mg() -> MaskGITTransformer:
    torch.manual_seed(0)
    return _perturbed(MaskGITTransformer(**MG))


@pytest.fixture(scope="module")
def en() -> ENAT:
    torch.manual_seed(0)
    return _perturbed(ENAT(**EN))


def _inputs(mask_id: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 16, (3, 16), generator=g)
    ids[:, :6] = mask_id  # the same number masked in every row (ENAT's rule)
    return ids, torch.tensor([1, 4, 9])


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kind", ["maskgit", "enat"])
def test_is_a_diffusers_model_built_from_arch(kind):
    from diffusers.configuration_utils import ConfigMixin
    from diffusers.models.modeling_utils import ModelMixin

    cls, arch = (MaskGITTransformer, MG) if kind == "maskgit" else (ENAT, EN)
    torch.manual_seed(0)
    a = cls(**arch)
    torch.manual_seed(0)
    b = cls.from_arch(arch)
    torch.manual_seed(0)
    c = cls(arch)  # the older positional-mapping call builds the same model
    assert isinstance(a, ModelMixin) and isinstance(a, ConfigMixin)
    _same_state(a, b)
    _same_state(a, c)
    public = lambda m: {k: v for k, v in m.config.items() if not k.startswith("_")}  # noqa: E731
    assert public(a) == public(b) == public(c)
    for k, v in arch.items():
        assert a.config[k] == v and getattr(a.arch, k) == v
    with pytest.raises(UserError, match="unknown"):
        cls.from_arch({**arch, "depthh": 3})
    with pytest.raises(UserError, match="divisible"):
        cls.from_arch({**arch, "hidden_dim": 30})
    with pytest.raises(UserError, match="divisible"):
        cls(**{**arch, "hidden_dim": 30})


def test_official_aliases_in_from_arch():
    m = MaskGITTransformer.from_arch({**{k: v for k, v in MG.items() if k != "grid_size"}, "patch_size": 4})
    assert m.config.grid_size == 4
    e = ENAT.from_arch({**{k: v for k, v in EN.items() if k not in ("enc_depth", "dec_depth")}, "enc_dec": [2, 1]})
    assert (e.config.enc_depth, e.config.dec_depth) == (2, 1)


@pytest.mark.parametrize("kind", ["maskgit", "enat"])
def test_save_pretrained_round_trip(kind, mg, en, tmp_path):
    model = mg if kind == "maskgit" else en
    cls = type(model)
    model.save_pretrained(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert names == {"config.json", "diffusion_pytorch_model.safetensors"}
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["_class_name"] == cls.__name__
    # diffusers' component rule: import_module(module).<class>.from_pretrained(folder)
    loaded = getattr(importlib.import_module(cls.__module__), cls.__name__).from_pretrained(tmp_path / "m")
    assert not loaded.training and loaded.arch == model.arch
    _same_state(model, loaded)
    ids, y = _inputs()
    with torch.no_grad():
        assert torch.equal(model(ids, y), loaded(ids, y))
    # the diffusers pipeline loader's keyword arguments are accepted
    again = cls.from_pretrained(str(tmp_path / "m"), low_cpu_mem_usage=False, use_safetensors=True, variant=None,
                                device_map=None)
    _same_state(model, again)
    sub = cls.from_pretrained(tmp_path, subfolder="m")
    _same_state(model, sub)


@pytest.mark.parametrize("kind", ["maskgit", "enat"])
def test_torch_dtype_on_every_path(kind, mg, en, tmp_path):
    model = mg if kind == "maskgit" else en
    cls, arch = type(model), (MG if kind == "maskgit" else EN)
    model.save_pretrained(tmp_path / "diffusers")
    official = tmp_path / ("MaskGIT_ImageNet_256.pth" if kind == "maskgit" else "nnet_ema.pth")
    state = to_valeoai_state_dict(model.state_dict()) if kind == "maskgit" else model.state_dict()
    torch.save({"model_state_dict": state} if kind == "maskgit" else state, official)
    legacy = tmp_path / "legacy"  # mgen's folder layout before the diffusers one
    legacy.mkdir()
    save_safetensors(model.state_dict(), legacy / "model.safetensors")
    (legacy / "config.json").write_text(json.dumps(arch))
    ids, y = _inputs()
    with torch.no_grad():
        ref = copy.deepcopy(model).to(torch.bfloat16)(ids, y)
    for path, kw in ((tmp_path / "diffusers", {}), (official, {"config": arch}), (legacy, {}),
                     (legacy / "model.safetensors", {"config": arch})):
        for dtype_kw in ("torch_dtype", "dtype"):
            m = cls.from_pretrained(path, **kw, **{dtype_kw: torch.bfloat16})
            assert {p.dtype for p in m.parameters()} == {torch.bfloat16}, (path, dtype_kw)
            with torch.no_grad():
                out = m(ids, y)
            assert out.dtype == torch.float32 and torch.equal(out, ref), path
        m32 = cls.from_pretrained(path, **kw)
        _same_state(model, m32)
    with pytest.raises(UserError, match="torch.dtype"):
        cls.from_pretrained(tmp_path / "diffusers", torch_dtype="bf16")


@pytest.mark.parametrize("name", ["maskgit-digits", "enat-digits"])
def test_shipped_weights_load_by_name(name):
    if not (package_weights_dir() / f"{name}.safetensors").exists():
        pytest.skip(f"{name} weights not shipped in this checkout")
    cls = MaskGITTransformer if name.startswith("maskgit") else ENAT
    m = cls.from_pretrained(name)
    assert not m.training and m.config.codebook_size == 256 and m.config.num_classes == 10
    b = cls.from_pretrained(name, torch_dtype=torch.bfloat16)
    assert b.tok_emb.weight.dtype == torch.bfloat16 if name.startswith("maskgit") else \
        b.x_embedder.word_embeddings.weight.dtype == torch.bfloat16


def test_converters_write_the_diffusers_layout(mg, en, tmp_path):
    torch.save({"model_state_dict": to_valeoai_state_dict(mg.state_dict())}, tmp_path / "mg.pth")
    maskgit_mod.convert_checkpoint(tmp_path / "mg.pth", tmp_path / "mg", config=None, **MG)
    assert (tmp_path / "mg" / "diffusion_pytorch_model.safetensors").exists()
    _same_state(mg, MaskGITTransformer.from_pretrained(tmp_path / "mg"))
    torch.save(en.state_dict(), tmp_path / "nnet_ema.pth")
    enat_mod.convert_checkpoint(tmp_path / "nnet_ema.pth", tmp_path / "en", config=None, **EN)
    _same_state(en, ENAT.from_pretrained(tmp_path / "en"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # atomic: no temp left


def test_looks_like(mg, en):
    assert maskgit_mod.looks_like(mg.state_dict())
    assert maskgit_mod.looks_like(to_valeoai_state_dict(mg.state_dict()))
    assert not maskgit_mod.looks_like(en.state_dict())
    assert enat_mod.looks_like(en.state_dict())
    assert enat_mod.looks_like({f"module.{k}": v for k, v in en.state_dict().items()})
    assert not enat_mod.looks_like(mg.state_dict())
