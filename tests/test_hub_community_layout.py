"""The community conversions in ``jadechoghari/mar`` (issue 16, item 4): mgen assumes flat state dicts in the
official key names (MAR: the ``model`` / ``model_ema`` dicts of LTH14/mar; kl16: the LDM layout of ``kl16.ckpt``).
Such a file loads; one in another layout (a ``model.`` prefix, diffusers' key names) is refused in one line that
names the file. The registry entries name those files in the local Hugging Face cache."""

from __future__ import annotations

import sys

import pytest
import torch

from mgen import hub, registry
from mgen.errors import UserError
from mgen.models.mar import MAR
from mgen.tokenizers.kl import KLTokenizer
from tests_helpers import MAR_ARCH, tiny_mar_pipeline

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "tokenizers"))
from tokenizers_ldm_reference import ldm_state_dict  # noqa: E402


def _one_line_naming(err: BaseException, path) -> None:
    msg = str(err)
    assert "\n" not in msg and str(path) in msg, msg


@pytest.mark.parametrize("name,filename", [("mar-b", "mar-base.safetensors"), ("mar-l", "mar-large.safetensors"),
                                           ("mar-h", "mar-huge.safetensors"), ("kl16", "kl16.safetensors")])
def test_registry_names_the_community_files(name, filename, tmp_path, monkeypatch):
    w = registry.get(name).weights
    assert (w.hf_repo, w.hf_filename) == ("jadechoghari/mar", filename)
    snap = tmp_path / "models--jadechoghari--mar" / "snapshots" / "rev0"
    snap.mkdir(parents=True)
    (tmp_path / "models--jadechoghari--mar" / "refs").mkdir()
    (tmp_path / "models--jadechoghari--mar" / "refs" / "main").write_text("rev0")
    hub.save_safetensors({"w": torch.ones(1)}, snap / filename)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("MGEN_HOME", str(tmp_path / "empty"))
    assert hub.resolve(name).path == snap / filename


def _mar():
    m = tiny_mar_pipeline().transformer
    return m, {k: v.contiguous() for k, v in m.state_dict().items()}, dict(MAR_ARCH)


def test_flat_official_mar_keys_load(tmp_path):
    m, sd, cfg = _mar()
    assert "z_proj.weight" in sd and any(k.startswith("encoder_blocks.") for k in sd)  # LTH14/mar's own names
    hub.save_safetensors(sd, tmp_path / "mar-base.safetensors")  # flat, no mgen metadata: a community file
    again = MAR.from_pretrained(tmp_path / "mar-base.safetensors", config=cfg)
    for k, v in again.state_dict().items():
        assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("layout", ["model-prefix", "diffusers"])
def test_other_mar_layouts_are_refused_in_one_line(tmp_path, layout):
    _, sd, cfg = _mar()
    if layout == "model-prefix":
        bad = {f"model.{k}": v for k, v in sd.items()}
    else:  # diffusers-style names (transformer_blocks / to_q ...), the layout of a diffusers port
        bad = {k.replace("encoder_blocks.", "transformer_blocks.").replace(".attn.qkv.", ".attn1.to_qkv."): v
               for k, v in sd.items()}
    path = tmp_path / "mar-base.safetensors"
    hub.save_safetensors(bad, path)
    with pytest.raises(UserError) as e:  # the registry path (mar-b etc.) always passes its config
        MAR.from_pretrained(path, config=cfg)
    _one_line_naming(e.value, path)


@pytest.mark.parametrize("layout", ["model-prefix"])
def test_other_mar_layouts_without_config_name_the_file(tmp_path, layout):
    _, sd, _ = _mar()
    path = tmp_path / "mar-base.safetensors"
    hub.save_safetensors({f"model.{k}": v for k, v in sd.items()}, path)
    with pytest.raises(UserError) as e:
        MAR.from_pretrained(path)
    _one_line_naming(e.value, path)


def test_flat_ldm_kl16_keys_load_and_other_layouts_are_refused(tmp_path):
    sd = ldm_state_dict(32, (1, 2), 1, 4, (), torch.Generator().manual_seed(0))
    hub.save_safetensors(sd, tmp_path / "kl16.safetensors")
    tok = KLTokenizer.from_pretrained(tmp_path / "kl16.safetensors", scaling_factor=0.2325)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        want = KLTokenizer.from_pretrained(_ckpt(tmp_path, sd), scaling_factor=0.2325).encode(x)
        assert torch.equal(tok.encode(x), want)  # same as the official kl16.ckpt layout
    for tag, bad in (("prefix", {f"model.{k}": v for k, v in sd.items()}),
                     ("diffusers", {k.replace("encoder.down.", "encoder.down_blocks.").replace(".block.", ".resnets."): v
                                    for k, v in sd.items()})):
        path = tmp_path / f"kl16-{tag}.safetensors"
        hub.save_safetensors(bad, path)
        with pytest.raises(UserError) as e:
            KLTokenizer.from_pretrained(path)
        _one_line_naming(e.value, path)


def _ckpt(tmp_path, sd):
    torch.save({"state_dict": sd}, tmp_path / "kl16.ckpt")
    return tmp_path / "kl16.ckpt"
