"""dlm as diffusers components: MaskedDiffusionLM / JointSamplerLayer (ModelMixin + ConfigMixin), the TextTokenizer
(a transformers PreTrainedTokenizerFast), DLMPipeline save/load round trips, diffusers conventions (progress bar,
callback_on_step_end, dtype/device), and reduced precision (bf16 model, float32 sampling, same seed → same ids)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from mgen.errors import UserError
from mgen.models.dlm import DLMConfig, MaskedDiffusionLM, save_dlm
from mgen.models.dlm_data import TextTokenizer
from mgen.models.joint_sampler import JointSamplerLayer, save_joint
from mgen.pipelines.dlm import DLMPipeline
from mgen.samplers.dlm import DreamSampler, ExactSampler, LLaDASampler, model_logits
from mgen.samplers.joint import JointSampler
from mgen.samplers.settings import SamplerSettings

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = dict(vocab_size=4096, dim=32, depth=1, num_heads=2, mlp_hidden=32, tokenizer_file="dlm-text-tokenizer.json")
SMALL = dict(vocab_size=40, dim=32, depth=2, num_heads=2, mlp_hidden=48)


def tiny(arch=SMALL, seed: int = 0) -> MaskedDiffusionLM:
    torch.manual_seed(seed)
    m = MaskedDiffusionLM(**arch).eval()
    with torch.no_grad():  # sharper logits than the 0.02-std init
        m.tok_emb.weight.mul_(20)
    return m


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory) -> DLMPipeline:
    d = tmp_path_factory.mktemp("dlm")
    torch.manual_seed(0)
    save_dlm(MaskedDiffusionLM(**ARCH), str(d / "tiny.safetensors"))
    pipe = DLMPipeline.from_pretrained(d / "tiny.safetensors", gen_length=8, steps=4, temperature=1.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- the models ----------------------------------------------------------------------------------------------------
def test_model_is_a_diffusers_model_and_round_trips(tmp_path):
    from diffusers.configuration_utils import ConfigMixin
    from diffusers.models.modeling_utils import ModelMixin

    m = tiny()
    assert isinstance(m, ModelMixin) and isinstance(m, ConfigMixin)
    assert m.config.dim == 32 and m.cfg.dim == 32 and m.mask_id == 2
    assert MaskedDiffusionLM.from_arch(SMALL).config.depth == 2
    assert MaskedDiffusionLM(DLMConfig(**SMALL)).config.vocab_size == 40  # the older spelling
    m.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    back = MaskedDiffusionLM.from_pretrained(tmp_path)
    same_state(m, back)
    assert not back.training and back.fingerprint() == m.fingerprint()
    ids = torch.randint(3, 40, (2, 9))
    assert torch.equal(back(ids), m(ids))
    half = MaskedDiffusionLM.from_pretrained(tmp_path, torch_dtype=torch.bfloat16, low_cpu_mem_usage=True,
                                             variant=None, use_safetensors=True)
    assert half.dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown dlm arch keys"):
        MaskedDiffusionLM.from_arch({**SMALL, "bogus": 1})
    with pytest.raises(UserError, match="joint sampler"):
        MaskedDiffusionLM.from_arch({"base": "dlm-text"})


def test_our_file_and_shipped_weights_load_by_name(tmp_path):
    m = tiny()
    save_dlm(m, str(tmp_path / "m.safetensors"), dtype=torch.float32)
    back = MaskedDiffusionLM.from_pretrained(tmp_path / "m.safetensors", torch_dtype=torch.bfloat16)
    assert back.dtype == torch.bfloat16 and not back.training
    same_state(m, MaskedDiffusionLM.from_pretrained(tmp_path / "m.safetensors"))
    shipped = MaskedDiffusionLM.from_pretrained("dlm-text")
    assert shipped.config.dim == 192 and shipped.dtype == torch.float32
    layer = JointSamplerLayer.from_pretrained("joint-dlm-text")
    layer.check_base(shipped)
    assert layer.config.tokens_per_step == 4 and layer.config.base_name == "dlm-text"
    # the layer still recognises its base in reduced precision (fingerprint of the float32 weights)
    layer.check_base(MaskedDiffusionLM.from_pretrained("dlm-text", torch_dtype=torch.bfloat16))
    layer.check_base(shipped.to(torch.bfloat16))


def test_joint_layer_round_trips_and_builds_from_the_registry_arch(tmp_path):
    from mgen import registry

    base = tiny()
    torch.manual_seed(1)
    layer = JointSamplerLayer(base_arch=base.cfg.to_dict(), base_fingerprint=base.fingerprint(), base_name="tiny")
    with torch.no_grad():
        layer.norm.weight.fill_(1.0)
    layer.save_pretrained(tmp_path / "layer")
    back = JointSamplerLayer.from_pretrained(tmp_path / "layer")
    same_state(layer, back)
    assert back.base_fingerprint == base.fingerprint() and back.base_cfg == base.cfg
    h = base.hidden_states(torch.randint(3, 40, (1, 6)))
    ids = torch.randint(3, 40, (1, 6))
    assert torch.equal(back(base, h, ids)[0], layer(base, h, ids)[0])
    save_joint(layer, str(tmp_path / "j.safetensors"), dtype=torch.float32)
    same_state(layer, JointSamplerLayer.from_pretrained(tmp_path / "j.safetensors"))
    assert JointSamplerLayer.from_pretrained(tmp_path / "layer", torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    arch = registry.get("joint-dlm-text").arch
    fresh = JointSamplerLayer.from_arch(arch)
    assert fresh.base_cfg.dim == 192 and fresh.config.tokens_per_step == arch["tokens_per_step"]
    assert JointSamplerLayer(**arch).config.base_arch["dim"] == 192
    with pytest.raises(UserError):
        JointSamplerLayer.from_arch({**arch, "bogus": 1})


# -- the tokenizer ---------------------------------------------------------------------------------------------------
def test_text_tokenizer_saves_and_reloads_through_transformers(tmp_path):
    import tokenizers as hf_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mgen.hub import package_weights_dir

    path = package_weights_dir() / "dlm-text-tokenizer.json"
    tok = TextTokenizer.from_file(path)
    assert isinstance(tok, PreTrainedTokenizerFast)
    raw = hf_tokenizers.Tokenizer.from_file(str(path))
    text = "The for statement iterates.\n\tdef f(x):  return x ** 2  # é, 中文 <|mask|>"
    ids = tok.encode(text)
    assert ids == raw.encode(text).ids and (tok.mask_id, tok.eos_id, tok.pad_id) == (2, 1, 0)
    assert tok.decode(ids + [1, 0]) == raw.decode([i for i in ids if i > 2], skip_special_tokens=False)
    tok.save_pretrained(tmp_path)
    for cls in (PreTrainedTokenizerFast, TextTokenizer):
        back = cls.from_pretrained(tmp_path)
        assert back.encode(text, add_special_tokens=False) == ids
        assert (back.mask_token_id, back.eos_token_id, back.pad_token_id) == (2, 1, 0)
    assert TextTokenizer.from_pretrained(tmp_path).decode(ids) == tok.decode(ids)


# -- the pipeline ----------------------------------------------------------------------------------------------------
def test_pipeline_round_trip_same_output_and_component_rule(tiny_pipe, tmp_path):
    g = torch.Generator().manual_seed(0)
    out = tiny_pipe(["The for statement", "Return"], generator=g)
    assert out.sequences.shape[1] - 8 == max(len(tiny_pipe.tokenizer.encode(p)) for p in ["The for statement", "Return"])
    tiny_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["model"] == ["mgen.models.dlm", "MaskedDiffusionLM"]
    assert index["scheduler"] == ["mgen.samplers.settings", "SamplerSettings"]
    assert index["joint_sampler"] == [None, None]
    assert not (tmp_path / "sampler.json").exists()
    for name in ("model", "tokenizer", "scheduler"):  # diffusers' component rule
        module, cls = index[name]
        obj = getattr(importlib.import_module(module), cls).from_pretrained(tmp_path / name)
        assert type(obj).__name__ == cls
    back = DLMPipeline.from_pretrained(tmp_path)
    back.set_progress_bar_config(disable=True)
    assert back.scheduler.config.settings == tiny_pipe.scheduler.config.settings
    again = back(["The for statement", "Return"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.sequences, out.sequences) and again.texts == out.texts
    same_state(back.model, tiny_pipe.model)
    half = DLMPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"


def test_joint_pipeline_by_name_round_trips(tmp_path):
    pipe = DLMPipeline.from_pretrained("joint-dlm-text", gen_length=8)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.joint_sampler, JointSamplerLayer) and pipe.model.config.dim == 192
    assert pipe.scheduler.config.sampler == "mgen.samplers.joint:JointSampler"
    out = pipe("The with statement", generator=torch.Generator().manual_seed(0))
    assert pipe.last_stats.full_forwards == 2 and pipe.last_stats.sampler_passes == 6  # k = 4 from the layer
    pipe.save_pretrained(tmp_path)
    back = DLMPipeline.from_pretrained(tmp_path)
    back.set_progress_bar_config(disable=True)
    assert torch.equal(back("The with statement", generator=torch.Generator().manual_seed(0)).sequences,
                       out.sequences)
    same_state(back.joint_sampler, pipe.joint_sampler)
    moved = DLMPipeline.from_pipe(pipe)
    assert moved.model is pipe.model and moved.joint_sampler is pipe.joint_sampler


def test_pipeline_defaults_from_the_config_and_overrides(tiny_pipe):
    s = tiny_pipe.make_sampler()
    assert isinstance(s, LLaDASampler) and (s.gen_length, s.steps, s.block_length) == (8, 4, 8)
    assert isinstance(tiny_pipe.make_sampler(alg="entropy"), DreamSampler)
    assert isinstance(tiny_pipe.make_sampler(sampler="exact"), ExactSampler)
    j = tiny_pipe.make_sampler(tokens_per_step=2)
    assert isinstance(j, JointSampler) and j.gen_length == 8
    with pytest.raises(UserError, match="top_p does not apply to the llada sampler"):
        tiny_pipe.make_sampler(top_p=0.9)
    with pytest.raises(UserError, match="unknown sampler"):
        tiny_pipe.make_sampler(sampler="nope")
    shipped = DLMPipeline.from_pretrained("dlm-text")
    s = shipped.make_sampler()
    assert (s.gen_length, s.steps, s.block_length, s.temperature) == (64, 32, 32, 1.0)  # configs/dlm-text.yaml
    s = shipped.make_sampler(gen_length=8)  # the saved steps / block no longer fit: adapted
    assert (s.gen_length, s.steps, s.block_length) == (8, 8, 8)
    assert isinstance(SamplerSettings.of(s).build(), LLaDASampler)


def test_progress_bar_and_callback_on_step_end(tiny_pipe, capsys):
    seen = []

    def cb(pipe, step, timestep, kwargs):
        assert pipe is tiny_pipe and set(kwargs) == {"x"}
        seen.append((step, timestep))
        if step == 0:  # replace the state: a fixed token at the first generated position
            x = kwargs["x"].clone()
            x[:, -8] = 7
            return {"x": x}
        return None

    out = tiny_pipe("Return", callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["x"],
                    generator=torch.Generator().manual_seed(0))
    assert [s for s, _ in seen] == [0, 1, 2, 3] and seen[-1][1] == 0.0
    assert int(out.sequences[0, -8]) == 7
    with pytest.raises(UserError, match="callback_on_step_end_tensor_inputs"):
        tiny_pipe("Return", callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"])
    assert tiny_pipe.model_cpu_offload_seq == "model->joint_sampler"
    capsys.readouterr()
    tiny_pipe.set_progress_bar_config(disable=False)
    try:
        tiny_pipe("Return", generator=torch.Generator().manual_seed(0))
    finally:
        tiny_pipe.set_progress_bar_config(disable=True)
    assert "4/4" in capsys.readouterr().err
    tiny_pipe("Return", generator=torch.Generator().manual_seed(0))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("sampler", [
    LLaDASampler(steps=4, gen_length=8, block_length=4, temperature=1.0),
    DreamSampler(steps=4, gen_length=8, alg="entropy", temperature=1.0),
    ExactSampler(gen_length=6, temperature=1.0),
    JointSampler(gen_length=8, tokens_per_step=3, temperature=1.0),
])
def test_total_steps_is_the_number_of_callbacks(sampler):
    calls = []
    sampler.sample(tiny(), [[5, 6, 7]], generator=torch.Generator().manual_seed(0),
                   callback=lambda step, t, state: calls.append(step))
    assert calls == list(range(sampler.total_steps))


# -- reduced precision -------------------------------------------------------------------------------------------------
def test_bf16_model_float32_sampling_and_same_seed_same_ids():
    m32 = tiny()
    m16 = tiny().to(torch.bfloat16)
    assert m16.dtype == torch.bfloat16 and m16.tok_emb.weight.dtype == torch.bfloat16
    x = torch.randint(3, 40, (2, 7))
    assert m16(x).dtype == torch.bfloat16
    logits = model_logits(m16, x, None)
    assert logits.dtype == torch.float32  # softmax / Gumbel / confidence ranking in float32 (or float64)
    torch.testing.assert_close(logits.softmax(-1), model_logits(m32, x, None).softmax(-1), atol=0.05, rtol=0)
    layer = JointSamplerLayer(base_arch=m32.cfg.to_dict(), base_fingerprint=m32.fingerprint()).to(torch.bfloat16)
    with torch.no_grad():
        layer.norm.weight.fill_(1.0)
    for s, kw in ((LLaDASampler(steps=4, gen_length=8, block_length=4, temperature=1.0, cfg_scale=1.0), {}),
                  (DreamSampler(steps=4, gen_length=8, alg="maskgit_plus", temperature=0.8, top_p=0.9), {}),
                  (ExactSampler(gen_length=6, temperature=1.0), {}),
                  (JointSampler(gen_length=8, tokens_per_step=4, temperature=1.0), {"layer": layer})):
        a = s.sample(m16, [[5, 6, 7], [9, 10]], generator=torch.Generator().manual_seed(3), **kw)
        b = s.sample(m16, [[5, 6, 7], [9, 10]], generator=torch.Generator().manual_seed(3), **kw)
        assert a.dtype == torch.long and torch.equal(a, b) and not bool((a == 2).any()), type(s).__name__
    assert JointSampler(gen_length=8, tokens_per_step=4).sample(m16, [[5]], layer=layer).shape == (1, 9)


def test_bf16_pipeline_by_name_is_deterministic():
    pipe = DLMPipeline.from_pretrained("dlm-text", torch_dtype=torch.bfloat16, gen_length=16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.dtype == torch.bfloat16
    a = pipe("The with statement", generator=torch.Generator().manual_seed(0))
    b = pipe("The with statement", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts and len(a.texts[0]) > 0


def test_shared_call_arguments_are_ignored_where_they_do_not_apply(tiny_pipe):
    out = tiny_pipe("Return", sampler="exact", num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert tiny_pipe.last_stats.full_forwards == 8 and out.sequences.shape[1] >= 8
    tiny_pipe("Return", alg="entropy", block_length=4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="remasking does not apply"):
        tiny_pipe("Return", sampler="exact", remasking="random")


def test_joint_entry_with_its_own_family_loads(tmp_path):
    """configs/joint-dlm-text.yaml under the families table's ``joint-dlm`` family loads the same way."""
    from mgen import registry

    text = (registry.configs_dir() / "joint-dlm-text.yaml").read_text().replace("family: dlm", "family: joint-dlm")
    (tmp_path / "joint-dlm-text.yaml").write_text(text)
    entry = registry.load_config_file(tmp_path / "joint-dlm-text.yaml")
    assert entry.family == "joint-dlm"
    layer = JointSamplerLayer.from_pretrained("joint-dlm-text",
                                              config=tmp_path / "joint-dlm-text.yaml")
    assert layer.config.tokens_per_step == 4
    pipe = DLMPipeline._build(None, entry, None, None, None, False, None)
    assert isinstance(pipe.joint_sampler, JointSamplerLayer) and pipe.scheduler.config.sampler.endswith("JointSampler")
