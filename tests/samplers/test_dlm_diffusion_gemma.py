"""DiffusionGemma: mgen's sampler against transformers' own ``generate`` on tiny random models, and loading."""

from __future__ import annotations

import time

import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
    pytest.skip("transformers without DiffusionGemma (needs >= 5.24)", allow_module_level=True)

from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion  # noqa: E402
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (  # noqa: E402
    EntropyBoundSampler, EntropyBoundSamplerConfig)

from mgen.errors import UserError  # noqa: E402
from mgen.models.diffusion_gemma import (DiffusionGemmaLM, is_diffusion_gemma_folder,  # noqa: E402
                                         load_diffusion_gemma)
from mgen.samplers.diffusion_gemma import DiffusionGemmaSampler, entropy_bound_accept  # noqa: E402

VOCAB = 16


def tiny_config(canvas_length: int = 4, hidden: int = 8) -> DiffusionGemmaConfig:
    """1 layer, hidden 8, vocabulary 16 (the vision tower is required by the class: also tiny)."""
    return DiffusionGemmaConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4, global_head_dim=4,
                         sliding_window=8, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                         max_position_embeddings=256, num_experts=2, top_k_experts=1, moe_intermediate_size=8,
                         layer_types=["full_attention"]),
        vision_config=dict(model_type="gemma4_vision", hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, head_dim=4, position_embedding_size=16,
                           patch_size=2),
        canvas_length=canvas_length, boi_token_id=13, eoi_token_id=14, image_token_id=15)


@pytest.fixture(scope="module")
def model(one_thread) -> DiffusionGemmaForBlockDiffusion:
    torch.manual_seed(0)
    return DiffusionGemmaForBlockDiffusion(tiny_config()).eval()


PROMPTS = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 3], [2, 3, 3, 3]])

# (sampler settings, generate-only settings): EOS off / on, several EOS ids and a wide bound, early stopping
# forced (confidence threshold above log V, so rows stop once their argmax is stable), no stopping at all
CASES = [
    (dict(), dict()),
    (dict(), dict(eos_token_id=1, pad_token_id=0)),
    (dict(entropy_bound=0.5), dict(eos_token_id=[1, 4], pad_token_id=0)),
    (dict(confidence_threshold=10.0, stability_threshold=2), dict(eos_token_id=4, pad_token_id=0)),
    (dict(confidence_threshold=10.0, stability_threshold=0, t_min=0.1, t_max=2.0), dict()),
]


def reference_generate(model, ids, settings: dict, special: dict, max_new_tokens: int, steps: int,
                       attention_mask=None):
    s = dict(entropy_bound=0.1, t_min=0.4, t_max=0.8, stability_threshold=1, confidence_threshold=0.005)
    s.update(settings)
    kw = dict(special)
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    out = model.generate(ids, max_new_tokens=max_new_tokens, max_denoising_steps=steps,
                         sampler_config=EntropyBoundSamplerConfig(entropy_bound=float(s["entropy_bound"])),
                         t_min=s["t_min"], t_max=s["t_max"], stability_threshold=s["stability_threshold"],
                         confidence_threshold=float(s["confidence_threshold"]), **kw)
    return out.sequences, out.tokens_per_forward


@pytest.mark.parametrize("case", range(len(CASES)))
def test_reference_mode_equals_transformers_generate(model, case):
    settings, special = CASES[case]
    equal = 0
    for seed in range(4):
        torch.manual_seed(seed)
        ref, ref_tpf = reference_generate(model, PROMPTS, settings, special, max_new_tokens=10, steps=6)
        torch.manual_seed(seed)
        sampler = DiffusionGemmaSampler(max_denoising_steps=6, reference="transformers", **settings)
        out = sampler.sample(model, PROMPTS, max_new_tokens=10, **special)
        assert out.shape == ref.shape
        equal += int(torch.equal(out, ref))
        assert torch.allclose(sampler.tokens_per_forward.float(), ref_tpf.float())
    assert equal == 4


def test_reference_mode_eos_padding_and_early_stop_happen(model):
    """The cases above really exercise EOS padding and early stopping (not just the plain loop)."""
    settings, special = CASES[3]
    calls = []
    torch.manual_seed(1)
    s = DiffusionGemmaSampler(max_denoising_steps=6, reference="transformers", **settings)
    out = s.sample(model, PROMPTS, max_new_tokens=12, callback=lambda i, t, st: calls.append(i), **special)
    torch.manual_seed(1)
    ref, _ = reference_generate(model, PROMPTS, settings, special, max_new_tokens=12, steps=6)
    assert torch.equal(out, ref)
    assert len(calls) < s.total_steps == 6 * 3  # stopped early in at least one canvas
    new = out[:, PROMPTS.shape[1]:]
    assert bool((new == 4).any()) and bool((new == 0).any())  # an EOS and pad after it


def test_reference_mode_left_padding_and_longer_canvas(one_thread):
    torch.manual_seed(3)
    m = DiffusionGemmaForBlockDiffusion(tiny_config(canvas_length=6)).eval()
    ids = torch.tensor([[0, 0, 2, 5, 6], [2, 8, 9, 3, 4]])
    am = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    for seed in range(3):
        torch.manual_seed(seed)
        ref, _ = reference_generate(m, ids, {}, dict(eos_token_id=1, pad_token_id=0), 13, 5, attention_mask=am)
        torch.manual_seed(seed)
        out = DiffusionGemmaSampler(max_denoising_steps=5, reference="transformers").sample(
            m, ids, attention_mask=am, max_new_tokens=13, eos_token_id=1, pad_token_id=0)
        assert torch.equal(out, ref)


def test_accept_rule_equals_transformers():
    torch.manual_seed(0)
    logits = torch.randn(3, 9, VOCAB) * 3
    for bound in (1e-6, 0.1, 0.7, 5.0):
        eb = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=bound), canvas_length=9, vocab_size=VOCAB,
                                 max_denoising_steps=1)
        cur = torch.zeros(3, 9, dtype=torch.long)
        den = torch.ones(3, 9, dtype=torch.long)
        accepted = eb.accept_canvas(cur, den, logits, 1)
        assert torch.equal(entropy_bound_accept(logits, bound), accepted.bool())


def test_tiny_model_is_fast_and_deterministic(model):
    s = DiffusionGemmaSampler(max_denoising_steps=8)
    t0 = time.perf_counter()
    a = s.sample(model, PROMPTS, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    elapsed = time.perf_counter() - t0
    b = s.sample(model, PROMPTS, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    assert elapsed < 1.0
    assert a.shape == (3, 4 + 8) and torch.equal(a[:, :4], PROMPTS)
    assert torch.equal(a, b)
    assert int(a.max()) < VOCAB


def test_default_mode_is_batch_invariant(model):
    """Row i with generator i gives the same tokens alone as in the batch (rows draw only while running)."""
    settings = dict(confidence_threshold=10.0, stability_threshold=1)
    s = DiffusionGemmaSampler(max_denoising_steps=6, **settings)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    batch = s.sample(model, PROMPTS, max_new_tokens=12, generator=gens, eos_token_id=4, pad_token_id=0)
    for i in range(3):
        solo = s.sample(model, PROMPTS[i:i + 1], max_new_tokens=12, generator=[torch.Generator().manual_seed(10 + i)],
                        eos_token_id=4, pad_token_id=0)
        w = solo.shape[1]
        assert torch.equal(batch[i, :w], solo[0])
        assert bool((batch[i, w:] == 0).all())


def test_callback_can_replace_state(model):
    seen = []

    def cb(step, temperature, state):
        seen.append((step, temperature))
        return {"x": torch.full_like(state["x"], 5)}

    s = DiffusionGemmaSampler(max_denoising_steps=4, stability_threshold=None, confidence_threshold=None)
    s.sample(model, PROMPTS[:1], max_new_tokens=4, generator=torch.Generator().manual_seed(0), callback=cb)
    assert [i for i, _ in seen] == [0, 1, 2, 3] and s.total_steps == 4
    assert seen[0][1] == pytest.approx(0.8) and seen[-1][1] == pytest.approx(0.4 + 0.4 / 4)


@pytest.mark.parametrize("kwargs", [dict(entropy_bound=0.0), dict(entropy_bound=-1.0), dict(t_min=0.9),
                                    dict(max_denoising_steps=0), dict(reference="numpy")])
def test_bad_settings(kwargs):
    with pytest.raises(UserError):
        DiffusionGemmaSampler(**kwargs)


def test_not_a_diffusion_gemma_model():
    with pytest.raises(UserError, match="not a DiffusionGemma"):
        DiffusionGemmaSampler().sample(torch.nn.Linear(2, 2), PROMPTS, max_new_tokens=4)


def _save_tokenizer(folder) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1", bos_token="t2",
                            unk_token="t3").save_pretrained(folder)


def test_folder_loads_without_remote_code_and_matches(model, tmp_path):
    model.save_pretrained(tmp_path)
    _save_tokenizer(tmp_path)
    assert is_diffusion_gemma_folder(tmp_path)
    lm, tok = load_diffusion_gemma(tmp_path)
    assert isinstance(lm, DiffusionGemmaLM) and lm.mask_id is None and lm.canvas_length == 4
    ids = torch.tensor([tok("t2 t5 t6 t7")["input_ids"]])
    assert ids.tolist() == [[2, 5, 6, 7]]
    s = DiffusionGemmaSampler(max_denoising_steps=5, reference="transformers")
    torch.manual_seed(0)
    a = s.sample(lm, ids, max_new_tokens=8)
    torch.manual_seed(0)
    b = s.sample(model, ids, max_new_tokens=8)
    assert torch.equal(a, b)


def test_folder_without_tokenizer_is_one_line_error(model, tmp_path):
    model.save_pretrained(tmp_path)
    with pytest.raises(UserError) as e:
        load_diffusion_gemma(tmp_path)
    assert "without a tokenizer" in str(e.value) and "\n" not in str(e.value)


def test_hf_text_loader_recognises_the_folder_before_the_masked_lm_path(model, tmp_path):
    from mgen.models.dlm_adapters import load_hf_dlm

    model.save_pretrained(tmp_path)
    _save_tokenizer(tmp_path)
    lm, tok = load_hf_dlm(tmp_path)
    assert isinstance(lm, DiffusionGemmaLM) and lm.default_sampler == "diffusion_gemma"
    ids = [tok("t2 t5 t6 t7")["input_ids"], tok("t2 t8")["input_ids"]]  # lists: left-padded by the sampler
    out = DiffusionGemmaSampler(max_denoising_steps=3, max_new_tokens=4).sample(
        lm, ids, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8) and out[1, :2].tolist() == [0, 0]


def test_dlm_pipeline_runs_a_diffusion_gemma_folder(model, tmp_path):
    from mgen.pipelines.dlm import DLMPipeline

    model.save_pretrained(tmp_path)
    _save_tokenizer(tmp_path)
    pipe = DLMPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.sampler, DiffusionGemmaSampler)  # the model's default sampler, no option needed
    out = pipe("t2 t5 t6", max_denoising_steps=3, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    direct = DiffusionGemmaSampler(max_denoising_steps=3, max_new_tokens=8).sample(
        pipe.model, [[2, 5, 6]], generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.sequences, direct) and isinstance(out.texts[0], str)
    from mgen.pipelines import load_pipeline

    again = load_pipeline(tmp_path)  # the one resolver reaches the same pipeline and sampler
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.sampler, DiffusionGemmaSampler)
    out2 = again("t2 t5 t6", max_denoising_steps=3, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out2.sequences, direct)


def test_cli_sample_on_a_folder_and_without_tokenizer(model, tmp_path, capsys):
    from mgen.cli import main as cli_main

    bare = tmp_path / "bare"
    model.save_pretrained(bare)
    capsys.readouterr()  # transformers' shard-writing bar
    assert cli_main(["sample", "--model", str(bare), "--prompt", "t2 t5"]) == 2
    err = capsys.readouterr().err
    assert "without a tokenizer" in err and len(err.strip().splitlines()) == 1
    full = tmp_path / "full"
    model.save_pretrained(full)
    _save_tokenizer(full)
    capsys.readouterr()
    assert cli_main(["sample", "--model", str(full), "--prompt", "t2 t5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("t2 t5")
