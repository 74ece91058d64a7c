"""dlm adapters: tiny random transformers folders (BERT, ModernBERT, a custom-code "Dream") loaded locally."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from mgen.errors import UserError
from mgen.models.dlm_adapters import HFDiffusionLM, load_hf_dlm, shift_logits_right
from mgen.samplers.dlm import DreamSampler, LLaDASampler

WORDS = ["the", "for", "statement", "loop", "is", "a", "of", "in", "to", "python", "function", "class", "and", "value"]


def _bert_tokenizer(folder):
    from transformers import BertTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    tok = BertTokenizerFast(vocab=vocab)
    tok.save_pretrained(str(folder))
    return tok


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("bert")
    tok = _bert_tokenizer(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(cfg).save_pretrained(str(folder))
    return folder


def test_bert_folder_samples_with_llada(bert_folder):
    model, tok = load_hf_dlm(bert_folder)
    assert model.mask_id == tok.tokenizer.mask_token_id and not model.shift_logits
    prompt = tok.encode("the for statement")
    assert prompt == [5, 6, 7]
    out = LLaDASampler(steps=4, gen_length=8, block_length=4, temperature=1.0).sample(
        model, [prompt, tok.encode("python")], generator=torch.Generator().manual_seed(0))
    assert not bool((out == model.mask_id).any())
    assert isinstance(tok.decode(out[0, 3:].tolist()), str)
    # the adapter's logits are the transformers model's own (aligned) logits
    ids = torch.tensor([prompt + [model.mask_id]])
    ref = model.model(input_ids=ids).logits
    ref[..., model.mask_id] = torch.finfo(ref.dtype).min  # [MASK] gets no probability
    torch.testing.assert_close(model(ids), ref)


def test_modernbert_folder(tmp_path):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    tok = _bert_tokenizer(tmp_path)
    torch.manual_seed(0)
    cfg = ModernBertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=0, mask_token_id=4,
                           bos_token_id=2, eos_token_id=3, sep_token_id=3, cls_token_id=2)
    ModernBertForMaskedLM(cfg).save_pretrained(str(tmp_path))
    model, tok2 = load_hf_dlm(tmp_path)
    out = DreamSampler(steps=4, gen_length=8, alg="maskgit_plus", temperature=0.5).sample(
        model, [tok2.encode("the loop")], generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 10) and not bool((out == 4).any())


def test_shifted_vs_aligned_logits(bert_folder):
    model, _ = load_hf_dlm(bert_folder)
    shifted = HFDiffusionLM(model.model, model.mask_id, model.eos_id, model.pad_id, shift_logits=True,
                            kind="shifted")  # not "masked_lm": raw logits
    ids = torch.tensor([[5, 6, 7, 4, 4]])
    raw = model.model(input_ids=ids).logits
    got = shifted(ids)
    torch.testing.assert_close(got[:, 1:], raw[:, :-1])  # row i comes from row i-1 (Dream's layout)
    torch.testing.assert_close(got[:, 0], raw[:, 0])
    torch.testing.assert_close(shift_logits_right(torch.arange(4.0).view(1, 4, 1)).flatten(),
                               torch.tensor([0.0, 0.0, 1.0, 2.0]))


CUSTOM_CODE = '''
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class TinyDreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(self, vocab_size=19, hidden_size=16, **kw):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        super().__init__(**kw)


class TinyDreamModel(PreTrainedModel):
    """Predicts the NEXT token from each position (Dream's shifted layout): logits[i] = f(token i)."""
    config_class = TinyDreamConfig

    def __init__(self, config):
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kw):
        return MaskedLMOutput(logits=self.out(self.emb(input_ids)))
'''


@pytest.fixture()
def dream_folder(tmp_path):
    _bert_tokenizer(tmp_path)
    (tmp_path / "modeling_tinydream.py").write_text(textwrap.dedent(CUSTOM_CODE))
    torch.manual_seed(0)
    state = {"emb.weight": torch.randn(19, 16), "out.weight": torch.randn(19, 16), "out.bias": torch.zeros(19)}
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "Dream", "vocab_size": 19, "hidden_size": 16, "mask_token_id": 4,
        "auto_map": {"AutoConfig": "modeling_tinydream.TinyDreamConfig",
                     "AutoModel": "modeling_tinydream.TinyDreamModel"},
        "architectures": ["TinyDreamModel"]}))
    return tmp_path


def test_remote_code_needs_opt_in(dream_folder):
    with pytest.raises(UserError, match="trust-remote-code"):
        load_hf_dlm(dream_folder)


def test_dream_custom_code_with_opt_in_is_shifted(dream_folder, monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("modules")))
    model, tok = load_hf_dlm(dream_folder, trust_remote_code=True)
    assert model.shift_logits and model.kind == "dream" and model.mask_id == 4
    ids = torch.tensor([[5, 6, 7, 4]])
    raw = model.model(input_ids=ids).logits
    torch.testing.assert_close(model(ids)[:, 1:], raw[:, :-1])
    out = LLaDASampler(steps=2, gen_length=2, block_length=2, temperature=0.0).sample(
        model, [[5, 6, 7]], generator=torch.Generator().manual_seed(0))
    # greedy: the first generated token is the argmax of the row of the LAST prompt token (shifted layout)
    expect = raw[0, 2].clone()
    expect[4] = float("-inf")
    assert int(out[0, 3]) == int(expect.argmax())


def test_pipeline_over_a_transformers_folder(bert_folder, tmp_path):
    """DLMPipeline.from_pretrained(folder): the adapter + the folder's tokenizer; torch_dtype honoured; same seed →
    same ids; save_pretrained refused in one line (the transformers folder is the saved form)."""
    from mgen.pipelines.dlm import DLMPipeline

    pipe = DLMPipeline.from_pretrained(bert_folder, torch_dtype=torch.bfloat16, gen_length=8, steps=4)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.model, HFDiffusionLM) and pipe.dtype == torch.bfloat16
    a = pipe("the for statement", generator=torch.Generator().manual_seed(0))
    b = pipe("the for statement", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.sequences, b.sequences) and a.sequences.shape == (1, 11)
    assert "[MASK]" not in a.texts[0]
    with pytest.raises(UserError, match="transformers checkpoint"):
        pipe.save_pretrained(tmp_path / "saved")
