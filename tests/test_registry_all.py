"""The whole registry, for free: every config parses and names a family of the table, a random-weight model of every
entry builds (on the meta device: no memory), and every shipped model loads by name, samples, and round-trips
``save_pretrained`` → ``load_pipeline`` / ``load_tokenizer`` with identical output (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mgen import registry
from mgen.families import FAMILIES, family_of_class, get_family, import_target

ENTRIES = registry.list_models()
_NO_FILES = lambda e: not (e.weights.package or e.weights.filename or e.weights.hf_repo or e.weights.url)  # noqa: E731
#: models that run offline: weights shipped in the package, or a parameter-free tokenizer
SHIPPED = [e for e in ENTRIES if e.weights.package or (_NO_FILES(e) and get_family(e.family).is_tokenizer)]

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

#: a few decoding steps per sampler, so that sampling every shipped model stays fast
FAST = {"num_steps": 2, "head_steps": 2, "num_inference_steps": 2, "steps": 4, "gen_length": 8, "block_length": 8}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_entry_parses_and_names_a_family(entry):
    fam = get_family(entry.family)
    assert fam.name == entry.family
    assert Path(entry.path).stem == entry.name
    if entry.tokenizer is not None:
        tok = get_family(registry.get(entry.tokenizer).family)
        assert tok.is_tokenizer and tok.name in fam.tokenizers, (entry.name, entry.tokenizer)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_random_weight_model_builds(entry):
    fam = get_family(entry.family)
    cls = fam.model_class()
    arch = dict(entry.arch)
    if fam.kind == "sampler-layer":  # the layer's shape comes from its base model
        pytest.skip("a sampler layer is built from its base model")
    with torch.device("meta"):
        model = cls.from_arch(arch)
    assert isinstance(model, torch.nn.Module)
    assert family_of_class(type(model).__name__) is fam


def test_every_family_class_imports():
    for fam in FAMILIES.values():
        for target in (fam.model, fam.sampler, fam.pipeline, fam.detect):
            if target:
                assert import_target(target) is not None, target
        for _, fn in fam.converters.values():
            assert callable(import_target(fn)), fn


def _fast_settings(pipe) -> dict:
    allowed = set(pipe.scheduler.allowed()) if hasattr(pipe, "scheduler") and hasattr(pipe.scheduler, "allowed") else set()
    return {k: v for k, v in FAST.items() if k in allowed}


def _sample(pipe, fam):
    g = torch.Generator().manual_seed(0)
    if fam.kind in ("text", "sampler-layer"):
        out = pipe(prompt="The with statement", gen_length=8, num_inference_steps=4, generator=g)
        return out.sequences
    return pipe(class_labels=[1, 2], generator=g, output_type="pt").images


@pytest.mark.parametrize("entry", [e for e in SHIPPED if get_family(e.family).is_generator], ids=lambda e: e.name)
def test_shipped_generator_loads_samples_and_round_trips(entry, tmp_path):
    from mgen.pipelines import load_pipeline

    fam = get_family(entry.family)
    pipe = load_pipeline(entry.name)
    pipe.set_progress_bar_config(disable=True)
    if fam.kind not in ("text", "sampler-layer"):
        pipe.set_sampler(**_fast_settings(pipe))
    ref = _sample(pipe, fam)
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    for name, value in index.items():  # diffusers' component rule loads every listed component
        if name.startswith("_") or value[0] is None:
            continue
        module, cls = value
        loaded = getattr(__import__(module, fromlist=[cls]), cls).from_pretrained(tmp_path / "saved" / name)
        assert loaded is not None
    again = load_pipeline(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert torch.equal(_sample(again, fam), ref)
    assert type(again) is type(pipe)


@pytest.mark.parametrize("entry", [e for e in SHIPPED if get_family(e.family).is_tokenizer], ids=lambda e: e.name)
def test_shipped_tokenizer_loads_and_round_trips(entry, tmp_path):
    from mgen.tokenizers import load_tokenizer
    from mgen.tokenizers.digits import digits_images

    tok = load_tokenizer(entry.name)
    x, _ = digits_images("test", size=16, channels=3)
    x = x[:4]
    z = tok.encode(x)
    ref = tok.decode(z)
    tok.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "config.json").is_file()
    again = load_tokenizer(tmp_path / "tok")
    assert type(again) is type(tok)
    assert torch.equal(again.encode(x), z)
    assert torch.equal(again.decode(z), ref)
