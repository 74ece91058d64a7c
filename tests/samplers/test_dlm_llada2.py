"""LLaDA2 parity: mgen's LLaDA2Sampler against diffusers' LLaDA2Pipeline + BlockRefinementScheduler on dlm-text."""

from __future__ import annotations

import json

import pytest
import torch

from mgen.errors import UserError
from mgen.models.llada2 import LLADA2_MASK_ID, is_llada2_folder, load_llada2, looks_like_config
from mgen.samplers.llada2 import LLaDA2Adapter, LLaDA2Sampler, trim_at_eos

diffusers = pytest.importorskip("diffusers")
if not hasattr(diffusers, "LLaDA2Pipeline"):
    pytest.skip("diffusers without LLaDA2Pipeline (needs >= 0.42)", allow_module_level=True)


@pytest.fixture(scope="module")
def dlm_text(one_thread):
    from mgen.pipelines.dlm import load_text_model

    net, tok = load_text_model("dlm-text")
    texts = ["The function returns the", "A list is a sequence of", "import os and then"]
    rows = [tok.encode(t) for t in texts]
    n = min(len(r) for r in rows)
    return net, torch.tensor([r[:n] for r in rows])


class EOSAt(torch.nn.Module):
    """dlm-text with the EOS logit raised at chosen absolute positions of chosen rows (to exercise EOS stops)."""

    def __init__(self, net: torch.nn.Module, where: dict[int, int], eos_id: int) -> None:
        super().__init__()
        self.net, self.where, self.eos_id = net, where, eos_id
        self.mask_id, self.pad_id = net.mask_id, net.pad_id

    def forward(self, input_ids, attention_mask=None):
        logits = self.net(input_ids, attention_mask=attention_mask).clone()
        for row, pos in self.where.items():
            if pos < logits.shape[1]:
                logits[row, pos, self.eos_id] += 40.0
        return logits


def run_diffusers(model, ids, seed, **kw):
    pipe = diffusers.LLaDA2Pipeline(model=LLaDA2Adapter(model).eval(), scheduler=diffusers.BlockRefinementScheduler(),
                                    tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe(input_ids=ids, mask_token_id=model.mask_id, eos_token_id=kw.pop("eos_token_id", 1),
                generator=torch.Generator().manual_seed(seed), output_type="seq", **kw).sequences


CASES = [
    dict(gen_length=16, block_length=16, temperature=0.0, num_inference_steps=8),  # one block, greedy, editing
    dict(gen_length=32, block_length=8, temperature=0.0, num_inference_steps=8),  # several blocks
    dict(gen_length=32, block_length=8, temperature=1.0, num_inference_steps=4),
    dict(gen_length=24, block_length=8, temperature=0.8, top_k=50, top_p=0.9, threshold=0.3, editing_threshold=0.2,
         num_inference_steps=3),
    dict(gen_length=32, block_length=16, temperature=1.0, editing_threshold=None, eos_early_stop=False,
         num_inference_steps=8),
    dict(gen_length=16, block_length=16, temperature=1.0, threshold=1.5, minimal_topk=2, num_inference_steps=32),
]


def to_sampler_kwargs(kw: dict) -> dict:
    out = dict(kw)
    out["steps"] = out.pop("num_inference_steps", 32)
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_llada2_pipeline(dlm_text, case):
    net, ids = dlm_text
    kw = CASES[case]
    equal = 0
    for seed in range(2):
        ref = run_diffusers(net, ids, seed, **dict(kw))
        out = LLaDA2Sampler(reference="diffusers", eos_id=1, **to_sampler_kwargs(kw)).sample(
            net, ids, generator=torch.Generator().manual_seed(seed))
        assert out.shape == (ids.shape[0], kw["gen_length"])  # no prompt in the output
        equal += int(torch.equal(out, ref))
    assert equal == 2


def test_matches_with_eos_early_stop(dlm_text):
    """EOS committed right after the prompt finishes a row (LLaDA2 finishes a row only when everything between
    the prompt and its first EOS is decoded): it is frozen; when every row is finished decoding stops."""
    net, ids = dlm_text
    p = ids.shape[1]
    kw = dict(gen_length=24, block_length=8, temperature=1.0, num_inference_steps=4)
    for where in ({0: p}, {0: p, 1: p, 2: p}):
        model = EOSAt(net, where, eos_id=1)
        for seed in range(2):
            ref = run_diffusers(model, ids, seed, **dict(kw))
            calls = []
            out = LLaDA2Sampler(reference="diffusers", eos_id=1, **to_sampler_kwargs(kw)).sample(
                model, ids, generator=torch.Generator().manual_seed(seed), callback=lambda i, t, st: calls.append(i))
            assert torch.equal(out, ref)
            assert int(out[0, 0]) == 1 and bool((out[0, 8:] == net.mask_id).all())  # row 0 frozen after EOS
            if len(where) == 3:
                assert len(calls) <= 4 and bool((out[:, 8:] == net.mask_id).all())  # stopped after block 1
    trimmed = trim_at_eos(out, 1)
    assert [len(t) for t in trimmed] == [1, 1, 1]


def test_default_mode_is_batch_invariant_and_deterministic(dlm_text):
    net, ids = dlm_text
    s = LLaDA2Sampler(gen_length=16, block_length=8, temperature=1.0, steps=4)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    batch = s.sample(net, ids, generator=gens)
    for i in range(3):
        solo = s.sample(net, ids[i:i + 1], generator=[torch.Generator().manual_seed(i)])
        assert torch.equal(solo[0], batch[i])
    again = s.sample(net, ids, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    assert torch.equal(again, batch)


def test_callback_steps_and_replacement(dlm_text):
    net, ids = dlm_text
    aligned = ids[:, :4]  # prompt = half a block: the first generated block starts inside it
    s = LLaDA2Sampler(gen_length=16, block_length=8, steps=4, editing_threshold=None, threshold=2.0,
                      eos_early_stop=False, reference="diffusers")
    calls = []
    s.sample(net, aligned, callback=lambda i, t, st: calls.append((i, t, st["x"].shape[1])))
    # first block: 4 prompt + 4 masks, 2 per step, done after 2 steps, one post step finds nothing to edit;
    # then 2 blocks of 8 masks, 4 steps each (diffusers' loop control)
    assert [c[0] for c in calls] == list(range(11))
    assert [c[2] for c in calls] == [8] * 3 + [16] * 4 + [24] * 4

    def fill(i, t, st):
        x = st["x"].clone()
        x[x == net.mask_id] = 7
        return {"x": x}

    out = s.sample(net, aligned, callback=fill)
    assert not bool((out == net.mask_id).any())


@pytest.mark.parametrize("kwargs", [dict(gen_length=20, block_length=8), dict(steps=0), dict(threshold=-1.0),
                                    dict(sampling_method="beam"), dict(reference="mgen")])
def test_bad_settings(kwargs):
    with pytest.raises(UserError):
        LLaDA2Sampler(**kwargs)


def test_gen_length_not_multiple_of_block_is_one_line():
    with pytest.raises(UserError) as e:
        LLaDA2Sampler(gen_length=100, block_length=32)
    assert "not a multiple of block_length" in str(e.value) and "\n" not in str(e.value)


def test_model_without_mask_token():
    class NoMask(torch.nn.Module):
        mask_id = None

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(UserError, match="mask token"):
        LLaDA2Sampler(gen_length=8, block_length=8).sample(NoMask(), torch.tensor([[3, 4]]))


def test_llada2_checkpoint_detection(tmp_path):
    cfg = {"model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"],
           "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                        "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert looks_like_config(cfg) and is_llada2_folder(tmp_path)
    assert not looks_like_config({"model_type": "llada"}) and LLADA2_MASK_ID == 156895
    with pytest.raises(UserError, match="trust-remote-code"):
        load_llada2(tmp_path)


def test_hf_text_loader_sends_llada2_folders_to_their_loader(tmp_path):
    from mgen.models.dlm_adapters import load_hf_dlm

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada2_moe", "auto_map": {
        "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"}}))
    with pytest.raises(UserError, match="LLaDA2 checkpoint"):
        load_hf_dlm(tmp_path)


def test_pipeline_sampler_llada2(dlm_text):
    from mgen.pipelines.dlm import DLMPipeline

    net, ids = dlm_text
    pipe = DLMPipeline.from_pretrained("dlm-text")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(input_ids=ids, sampler="llada2", gen_length=16, block_length=8, num_inference_steps=4,
               temperature=1.0, generator=torch.Generator().manual_seed(0), output_type="ids")
    direct = LLaDA2Sampler(gen_length=16, block_length=8, steps=4, temperature=1.0).sample(
        pipe.model, ids, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.sequences, direct)
    with pytest.raises(UserError, match="multiple of block_length"):
        pipe(input_ids=ids, sampler="llada2", gen_length=20, block_length=8)
