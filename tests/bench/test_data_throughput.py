"""`llmctl data prepare` tokens/s against the tokenizer's own batch-encode rate on the same text.

Both tokenize the same 80 stdlib files with the same BPE (trained once, outside the
timing). `prepare` is the whole command minus BPE training: read, encode in worker
processes, write HDF5 shards and metadata. `encode_batch` is the `tokenizers`
library on all cores, in memory, writing nothing. Run with `make bench`; the
tokens/s of each lands in the benchmark's extra_info.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("h5py")

DOCS = 80


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from llmctl.data.sources import stdlib_files
    from llmctl.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("bench")
    files = stdlib_files()[:DOCS]
    texts = [p.read_bytes().decode("utf-8", errors="replace") for p in files]
    tok = train_bpe(texts, 8192, "<|endoftext|>")
    tok.save(str(root / "tokenizer.json"))
    tokens = sum(len(e.ids) + 1 for e in tok.encode_batch(texts))
    return root, tok, texts, tokens


def _record(benchmark, tokens: int) -> None:
    benchmark.extra_info["tokens"] = tokens
    if benchmark.stats:  # None when benchmarks are disabled (the plain test run)
        benchmark.extra_info["tokens_per_s"] = round(tokens / benchmark.stats.stats.mean)


def test_tokenizers_encode_batch(benchmark, corpus):
    _, tok, texts, tokens = corpus
    benchmark.pedantic(tok.encode_batch, args=(texts,), rounds=5, warmup_rounds=1)
    _record(benchmark, tokens)


@pytest.mark.parametrize("workers", [1, os.cpu_count() or 1])
def test_data_prepare(benchmark, corpus, workers):
    from llmctl.config.data import DataConfig
    from llmctl.data.prepare import prepare

    root, _, _, tokens = corpus
    cfg = DataConfig.model_validate({
        "sources": [{"type": "stdlib"}], "max_documents": DOCS, "val_fraction": 0.05,
        "tokenizer": {"type": "file", "path": str(root / "tokenizer.json")},
        "output": {"dir": str(root / f"out{workers}")}})
    summary = benchmark.pedantic(prepare, args=(cfg, "bench.toml"),
                                 kwargs={"workers": workers, "force": True}, rounds=3, warmup_rounds=1)
    assert sum(summary["tokens"].values()) == tokens
    _record(benchmark, tokens)
