"""SamplerSettings, the pipelines' sampler component: which sampler, which settings, saved as a diffusers scheduler."""

from __future__ import annotations

import pytest

from mgen.errors import UserError
from mgen.samplers.settings import SamplerSettings

MAR = "mgen.samplers.mar:MARSampler"


def test_config_mapping_and_overrides():
    s = SamplerSettings.for_sampler(MAR, {"num_steps": 3, "cfg": 2.0, "not_a_mar_setting": 1}, num_steps=4)
    assert s.config.settings == {"num_steps": 4, "cfg": 2.0}  # the override wins; other samplers' keys are ignored
    with pytest.raises(UserError, match="unknown settings"):
        SamplerSettings.for_sampler(MAR, {}, no_such=1)
    assert s.build(num_steps=None).num_steps == 4 and s.build(num_steps=2).num_steps == 2


def test_save_load_round_trip(tmp_path):
    s = SamplerSettings.for_sampler(MAR, {"num_steps": 5, "temperature": 0.7})
    s.save_pretrained(tmp_path)
    again = SamplerSettings.from_pretrained(tmp_path)
    assert again.config.sampler == MAR and again.config.settings == s.config.settings


def test_explicit_none_and_non_finite():
    s = SamplerSettings.for_sampler("mgen.samplers.ddpm:DDPMSampler", {"guidance_channels": 3})
    assert s.build().guidance_channels == 3
    assert s.build({"guidance_channels": None}).guidance_channels is None
    with pytest.raises(UserError, match="finite"):
        s.build(guidance_scale=float("nan"))
