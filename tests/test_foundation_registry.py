"""Registry: every YAML in configs/ loads into typed entries; bad configs are refused clearly."""

from __future__ import annotations

import pytest

from mgen import registry
from mgen.errors import UserError


def test_every_yaml_loads():
    entries = registry.list_models()
    names = [e.name for e in entries]
    files = sorted(p.stem for p in registry.configs_dir().glob("*.yaml"))
    assert sorted(names) == files and len(names) == len(set(names))
    for e in entries:
        assert e.family in registry.FAMILIES
        assert isinstance(e.arch, dict) and isinstance(e.weights, registry.WeightsSpec)
        if e.tokenizer:
            assert registry.get(e.tokenizer).is_tokenizer, f"{e.name}: tokenizer {e.tokenizer} is not a tokenizer"


@pytest.mark.parametrize("name,width,depth,heads,dd,dw", [
    ("mar-b", 768, 12, 12, 6, 1024), ("mar-l", 1024, 16, 16, 8, 1280), ("mar-h", 1280, 20, 16, 12, 1536)])
def test_mar_presets_match_official(name, width, depth, heads, dd, dw):
    a = registry.get(name).arch
    assert (a["encoder_embed_dim"], a["encoder_depth"], a["encoder_num_heads"]) == (width, depth, heads)
    assert (a["decoder_embed_dim"], a["decoder_depth"], a["decoder_num_heads"]) == (width, depth, heads)
    assert (a["diffloss_d"], a["diffloss_w"]) == (dd, dw)
    assert a["buffer_size"] == 64 and a["mask_ratio_min"] == 0.7 and a["label_drop_prob"] == 0.1


def test_seed_presets_present():
    for name in ("mar-b", "mar-l", "mar-h", "maskgit", "dit-xl-2", "kl16", "sd-vae-ft-ema"):
        registry.get(name)
    assert registry.get("kl16").arch["scaling_factor"] == 0.2325
    assert registry.get("dit-xl-2").arch["hidden_size"] == 1152


def test_unknown_name_lists_known():
    with pytest.raises(UserError, match="unknown model 'nope'.*mar-b"):
        registry.get("nope")


def test_bad_configs(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("name: x\nfamily: mar\nbogus: 1\n")
    with pytest.raises(UserError, match="unknown config keys"):
        registry.load_config_file(p)
    p.write_text("name: x\nfamily: nofamily\n")
    with pytest.raises(UserError, match="unknown family"):
        registry.load_config_file(p)
    p.write_text("name: [x\n")
    with pytest.raises(UserError, match="not valid YAML"):
        registry.load_config_file(p)
    with pytest.raises(UserError, match="not found"):
        registry.load_config_file(tmp_path / "missing.yaml")
