"""dlm data: BPE training with Hugging Face tokenizers, the hash split, packing; the shipped tokenizer file."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import UserError
from mgen.models.dlm_data import SPECIAL_TOKENS, TextTokenizer, pack, split_documents, train_bpe


def test_bpe_round_trip_and_special_ids(tmp_path):
    texts = ["The for statement is used to iterate over the elements of a sequence."] * 20 + \
            ["Return the value of the named attribute of object."] * 20
    tok = train_bpe(texts, 300, tmp_path / "tok.json")
    assert (tok.pad_id, tok.eos_id, tok.mask_id) == (0, 1, 2)
    ids = tok.encode("Return the for statement")
    assert tok.decode(ids) == "Return the for statement"
    assert tok.decode(ids + [tok.mask_id, tok.eos_id]) == "Return the for statement"
    again = TextTokenizer.from_file(tmp_path / "tok.json")
    assert again.encode("Return the") == tok.encode("Return the")
    windows = pack(texts[:3], tok, 8)
    assert windows.shape[1] == 8 and windows.dtype == torch.long and int((windows == tok.eos_id).sum()) >= 1
    with pytest.raises(UserError):
        pack(["a"], tok, 1000)


def test_split_is_by_name_and_stable():
    docs = [(f"doc{i}", f"text {i}") for i in range(200)]
    train, held = split_documents(docs, holdout_every=10)
    assert len(train) + len(held) == 200 and 5 < len(held) < 40
    train2, held2 = split_documents(list(reversed(docs)), holdout_every=10)
    assert sorted(held) == sorted(held2)


def test_shipped_tokenizer():
    from mgen.hub import package_weights_dir

    tok = TextTokenizer.from_file(package_weights_dir() / "dlm-text-tokenizer.json")
    assert tok.vocab_size == 4096 and tok.mask_id == 2
    assert tok.decode(tok.encode('The "for" statement')) == 'The "for" statement'
    assert [tok.tokenizer.id_to_token(i) for i in range(3)] == SPECIAL_TOKENS


def test_bad_tokenizer_file(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError):
        TextTokenizer.from_file(tmp_path / "bad.json")
