"""Data config (TOML): where the text comes from, how it is tokenized, where shards go."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from llmctl.config.base import Name, StrictModel


class Source(StrictModel):
    """One source of documents."""

    type: Literal["files", "glob", "jsonl", "stdlib", "chat"]
    """files: listed paths; glob: a pattern; jsonl: one JSON object per line;
    stdlib: the Python standard library's own source files (always present); chat: JSONL
    conversations (`messages`: [{role, content}, ...]) or instructions (`instruction`,
    optional `input`, `output`), rendered through the chat template with the loss on the
    answers only."""
    paths: list[str] = []
    """Paths (files) or patterns (glob, jsonl may use either)."""
    text_field: str = "text"
    """jsonl only: the field holding the document text."""
    messages_field: str = "messages"
    """chat only: the field holding a conversation's messages."""
    weight: float = Field(1.0, gt=0)
    """Relative sampling weight."""

    @model_validator(mode="after")
    def _check(self) -> "Source":
        if self.type != "stdlib" and not self.paths:
            raise ValueError(f"a {self.type!r} source needs `paths`")
        return self


class Tokenizer(StrictModel):
    """Tokenizer: train a byte-level BPE, or load a tokenizer.json."""

    type: Literal["bpe", "file"] = "bpe"
    """bpe: train byte-level BPE on the corpus; file: load `path`."""
    vocab_size: int = Field(8192, ge=256, le=2**32 - 1)
    """Vocabulary size (bpe)."""
    path: Optional[str] = None
    """tokenizer.json to load (file)."""
    eos_token: str = "<|endoftext|>"
    """End-of-text token that joins documents."""
    chat_template: Optional[str] = None
    """chat sources: a tokenizer_config.json (or the folder holding one) whose `chat_template`
    renders conversations. Default: the tokenizer_config.json beside `path`, else llmctl's
    role-tagged template."""

    @model_validator(mode="after")
    def _check(self) -> "Tokenizer":
        if self.type == "file" and not self.path:
            raise ValueError("tokenizer type 'file' needs `path`")
        return self


class Output(StrictModel):
    """Where shards go."""

    dir: str = "data/tokens"
    """Output folder for HDF5 shards and metadata."""
    shard_tokens: int = Field(16_777_216, gt=0)
    """Tokens per shard."""


class DataConfig(StrictModel):
    """A data config (TOML)."""

    name: Name = "data"
    """Dataset name."""
    sources: list[Source] = Field(min_length=1)
    """Document sources."""
    tokenizer: Tokenizer = Tokenizer()
    """Tokenizer."""
    output: Output = Output()
    """Shard output."""
    val_fraction: float = Field(0.01, ge=0, lt=1)
    """Fraction of documents held out for validation."""
    seed: int = Field(1234, ge=0)
    """Seed for the train/validation split."""
    max_documents: Optional[int] = Field(None, gt=0)
    """Cap on documents read (for quick runs)."""
