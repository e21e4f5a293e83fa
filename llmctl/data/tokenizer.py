"""The tokenizer: train a byte-level BPE on the corpus, or load a tokenizer.json.

Byte-level BPE (as GPT-2) needs no unknown token: every byte is in the base
alphabet, so any text round-trips. The end-of-text token is a special token that
joins documents; the trainer and the shards both record the tokenizer's sha256 so
that tokens are never read with another tokenizer.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from llmctl.errors import LlmctlError


def train_bpe(texts: Iterable[str], vocab_size: int, eos_token: str):
    """A byte-level BPE with `vocab_size` entries (eos included) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos_token], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str, eos_token: str, where: str):
    """Load a tokenizer.json; its vocabulary must hold `eos_token`."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(path)
    except FileNotFoundError:
        raise LlmctlError(f"{where}: tokenizer file {path} not found") from None
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise LlmctlError(f"{where}: {path} is not a valid tokenizer.json: {e}") from None
    if tok.token_to_id(eos_token) is None:
        raise LlmctlError(f"{where}: tokenizer {path} has no token {eos_token!r}",
                          hint="set tokenizer.eos_token to its end-of-text token")
    return tok


def tokenizer_sha256(tok) -> str:
    """sha256 of the tokenizer's canonical JSON."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned integer type that holds every id."""
    return "uint16" if vocab_size <= 2**16 else "uint32"
