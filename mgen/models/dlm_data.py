"""Offline text for the shipped diffusion LM, and its byte-level BPE tokenizer (Hugging Face ``tokenizers``).

The corpus is what every CPython installation carries (docs/ARCHITECTURE.md, "Offline data"):
``pydoc_data.topics`` (the language reference topics that ``help()`` shows) and the docstrings of the
standard library's modules, classes and functions, read with :mod:`ast` (nothing is imported or run).
Documents are split into train / held-out by a hash of their name, so the split does not depend on the
order files are found in.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from transformers import PreTrainedTokenizerFast

from mgen.errors import UserError

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, MASK_TOKEN]


def _hf_tokenizers():
    """Hugging Face's ``tokenizers`` package (never our ``mgen.tokenizers``; see docs/ARCHITECTURE.md, "Layers")."""
    import importlib

    mod = importlib.import_module("tokenizers")
    if not hasattr(mod, "Tokenizer"):
        raise UserError("the Hugging Face 'tokenizers' package is shadowed by a local 'tokenizers' folder; "
                        "run from outside the repository root")
    return mod


def _held_out(name: str, holdout_every: int) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % holdout_every == 0


def stdlib_documents() -> list[tuple[str, str]]:
    """(name, text) for pydoc topics and for every stdlib source file's docstrings, in a fixed order."""
    from pydoc_data import topics

    docs = [(f"topic:{k}", topics.topics[k].strip()) for k in sorted(topics.topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip & set(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    parts.append(doc.strip())
        if parts:
            docs.append((f"file:{rel.as_posix()}", "\n\n".join(parts)))
    return docs


def split_documents(docs: Sequence[tuple[str, str]], holdout_every: int = 20) -> tuple[list[str], list[str]]:
    """Train and held-out texts: a document is held out when sha1(name) % holdout_every == 0."""
    train = [t for n, t in docs if not _held_out(n, holdout_every)]
    held = [t for n, t in docs if _held_out(n, holdout_every)]
    return train, held


def train_bpe(texts: Iterable[str], vocab_size: int, path: str | os.PathLike) -> "TextTokenizer":
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) with the special tokens, save it as one JSON file."""
    tk = _hf_tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return TextTokenizer.from_file(path)


class TextTokenizer(PreTrainedTokenizerFast):
    """A Hugging Face ``tokenizers`` BPE file as a ``transformers.PreTrainedTokenizerFast`` with the ids a masked
    diffusion LM needs (``mask_id`` / ``eos_id`` / ``pad_id``).

    Being a transformers tokenizer, ``DiffusionPipeline.save_pretrained`` writes it (``tokenizer.json`` +
    ``tokenizer_config.json``) and ``TextTokenizer.from_pretrained(folder)`` — or plain
    ``transformers.PreTrainedTokenizerFast.from_pretrained(folder)`` — restores the same encodings.
    ``encode(text)`` adds no special tokens (the BPE has no post-processor); ``decode(ids)`` drops the special
    tokens (mask / EOS / pad) unless ``skip_special_tokens=False``. (No ``__init__`` of its own: transformers
    then reads a saved ``tokenizer.json`` as it is instead of rebuilding the BPE from its vocabulary.)
    """

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        """A ``tokenizers`` JSON file (``tokenizer.json``, e.g. ``mgen/weights/dlm-text-tokenizer.json``)."""
        tk = _hf_tokenizers()
        try:
            tok = tk.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exceptions on bad files
            raise UserError(f"cannot read tokenizer file {path}: {str(e).splitlines()[0]}") from None
        if None in [tok.token_to_id(t) for t in SPECIAL_TOKENS]:
            raise UserError(f"tokenizer {path} lacks the special tokens {SPECIAL_TOKENS}")
        return cls(tokenizer_object=tok, mask_token=MASK_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)

    @property
    def mask_id(self) -> int:
        return int(self.mask_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.eos_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.pad_token_id)

    @property
    def tokenizer(self) -> Any:
        """The underlying ``tokenizers.Tokenizer`` (as the older dataclass exposed it)."""
        return self.backend_tokenizer

    def encode(self, text: str, *args: Any, add_special_tokens: bool = False, **kwargs: Any) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(super().encode(text, *args, add_special_tokens=add_special_tokens, **kwargs))

    def decode(self, token_ids: Any, skip_special_tokens: bool = True, skip_special: bool | None = None,
               **kwargs: Any) -> str:
        """Text of ``token_ids``; mask / EOS / pad (and any other special token) dropped by default."""
        if skip_special is not None:
            skip_special_tokens = skip_special
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return super().decode([int(i) for i in token_ids], skip_special_tokens=skip_special_tokens, **kwargs)


def pack(texts: Sequence[str], tokenizer: TextTokenizer, seq_len: int) -> torch.Tensor:
    """Concatenate documents (each followed by EOS) and cut into (n, seq_len) windows (the tail is dropped)."""
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer.encode(t))
        ids.append(tokenizer.eos_id)
    n = len(ids) // seq_len
    if n == 0:
        raise UserError(f"not enough text for one window of {seq_len} tokens")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
