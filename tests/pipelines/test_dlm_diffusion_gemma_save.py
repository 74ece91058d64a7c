"""A DLMPipeline holding a DiffusionGemma saves and loads back (issue 17): the ``model`` component is the
transformers ``DiffusionGemmaForBlockDiffusion`` itself, the tokenizer is the transformers tokenizer, ``scheduler``
names DiffusionGemmaSampler and its settings; every route gives the same tokens for the same seed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from test_dlm_diffusion_gemma import _save_tokenizer, tiny_config  # noqa: E402  (skips without DiffusionGemma)
from transformers import DiffusionGemmaForBlockDiffusion  # noqa: E402

from mgen.cli import main as cli_main  # noqa: E402
from mgen.errors import UserError  # noqa: E402
from mgen.models.diffusion_gemma import DiffusionGemmaLM  # noqa: E402
from mgen.pipelines import load_pipeline  # noqa: E402
from mgen.pipelines.dlm import DLMPipeline  # noqa: E402
from mgen.samplers.diffusion_gemma import DiffusionGemmaSampler  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["t2 t5 t6", "t2 t8"]
SETTINGS = dict(max_denoising_steps=3, max_new_tokens=8, entropy_bound=0.3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, one_thread):
    """(the pipeline built from a transformers folder, its reference output, the folder it saved)."""
    root = tmp_path_factory.mktemp("dg_save")
    torch.manual_seed(0)
    DiffusionGemmaForBlockDiffusion(tiny_config()).eval().save_pretrained(root / "hf")
    _save_tokenizer(root / "hf")
    pipe = DLMPipeline.from_pretrained(root / "hf", **SETTINGS)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    pipe.save_pretrained(root / "saved")
    return pipe, ref, root / "saved"


def _run(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(2)])


def test_saved_folder_lists_transformers_components(saved):
    pipe, _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "DLMPipeline"
    assert index["model"] == ["transformers", "DiffusionGemmaForBlockDiffusion"]
    assert index["tokenizer"][0] == "transformers"
    assert index["scheduler"] == ["mgen.samplers.settings", "SamplerSettings"]
    assert index["joint_sampler"] == [None, None]
    assert isinstance(pipe.model, DiffusionGemmaLM)  # the in-memory pipeline keeps its adapter after saving
    assert pipe.config["model"] == ("transformers", "DiffusionGemmaForBlockDiffusion")


def test_each_component_loads_with_its_own_rule(saved):
    pipe, _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    loaded = {}
    for name, value in index.items():  # diffusers' component rule: import_module(module).<class>.from_pretrained
        if name.startswith("_") or value[0] is None:
            continue
        module, cls = value
        loaded[name] = getattr(__import__(module, fromlist=[cls]), cls).from_pretrained(folder / name)
    hf = loaded["model"]
    assert type(hf) is DiffusionGemmaForBlockDiffusion
    ref_state = pipe.model.hf_model.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in hf.state_dict().items())
    assert loaded["tokenizer"]("t2 t5 t6", add_special_tokens=False)["input_ids"] == [2, 5, 6]
    sampler = loaded["scheduler"].build()
    assert isinstance(sampler, DiffusionGemmaSampler)
    assert (sampler.max_denoising_steps, sampler.max_new_tokens, sampler.entropy_bound) == (3, 8, 0.3)


@pytest.mark.parametrize("route", ["from_pretrained", "load_pipeline"])
def test_round_trip_gives_the_same_tokens(saved, route):
    _, ref, folder = saved
    again = DLMPipeline.from_pretrained(folder) if route == "from_pretrained" else load_pipeline(folder)
    assert type(again) is DLMPipeline and isinstance(again.model, DiffusionGemmaLM)
    assert isinstance(again.sampler, DiffusionGemmaSampler) and again.sampler.max_denoising_steps == 3
    out = _run(again)
    assert torch.equal(out.sequences, ref.sequences) and out.texts == ref.texts
    assert again.model.eos_id == 1 and again.model.pad_id == 0  # the adapter's ids came back with the model


def test_saved_again_from_a_loaded_pipeline(saved, tmp_path):
    _, ref, folder = saved
    load_pipeline(folder).save_pretrained(tmp_path / "twice")
    assert torch.equal(_run(load_pipeline(tmp_path / "twice")).sequences, ref.sequences)


def test_load_options_on_a_saved_folder(saved):
    _, _, folder = saved
    bf16 = load_pipeline(folder, torch_dtype=torch.bfloat16)
    assert bf16.model.dtype == torch.bfloat16
    over = DLMPipeline.from_pretrained(folder, max_denoising_steps=2)  # a sampler override on load
    assert over.sampler.max_denoising_steps == 2 and over.sampler.max_new_tokens == 8


def test_cli_sample_on_the_saved_folder(saved, capsys):
    pipe, _, folder = saved
    expected = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0)).texts[0]
    capsys.readouterr()
    assert cli_main(["sample", "--model", str(folder), "--prompt", PROMPTS[0], "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip() == (PROMPTS[0] + expected).strip()


def test_saved_folder_without_tokenizer_is_one_line(saved, tmp_path, capsys):
    pipe, ref, folder = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "tokenizer")
    for load in (DLMPipeline.from_pretrained, load_pipeline):
        with pytest.raises(UserError) as e:
            load(broken)
        assert "tokenizer" in str(e.value) and "\n" not in str(e.value)
    capsys.readouterr()
    assert cli_main(["sample", "--model", str(broken), "--prompt", "t2 t5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tokenizer" in err and len(err.splitlines()) == 1
    given = DLMPipeline.from_pretrained(broken, tokenizer=pipe.tokenizer)  # a tokenizer passed in fills the gap
    assert torch.equal(_run(given).sequences, ref.sequences)
