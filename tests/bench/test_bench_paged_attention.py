"""Decode speed of serving's two paged attention paths (ServeConfig `paged_attention`):
`gather` (each sequence's keys copied into one padded tensor per layer, then SDPA) against
`blockwise` (the pool read a segment of blocks at a time, llmctl/serve/paged.py), and
`auto` (the CPU default: one or the other per decode group, llmctl/serve/runner.py).

One decode step of B sequences of L cached tokens through the engine's runner
(`PagedRunner.forward`, the step the engine runs once the prompts are in): the cache is
filled with random K/V instead of running B x L prompt tokens first (the values do not
change the work). Decode tokens/s = B / step time. Two shapes: the tests' tiny llama
(2 layers, hidden 64, 4 heads, 2 KV heads, head_dim 16) and a bigger CPU shape (4
layers, hidden 512, 8 heads, 4 KV heads, head_dim 64, ffn 1536), at contexts 128 to
2048 and batches 1 to 64. The three alternate round by round (interleaved
repetitions on a shared machine), several steps a round; medians. Also a sweep of
paged.SEGMENT_BYTES on the bigger shape at the longest context.

    .venv/bin/python -m pytest -q tests/bench/test_bench_paged_attention.py --benchmark-enable -s

Run with `make bench`; not a pass/fail gate on speed.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

torch = pytest.importorskip("torch")

BIGGER = {"name": "bigger", "template": "llama", "layers": 4, "hidden": 512, "ffn": 1536, "heads": 8,
          "kv_heads": 4, "vocab_size": 384, "max_seq_len": 2304}
SHAPES = {"tiny": {**K.TINY_LLAMA, "max_seq_len": 2304}, "bigger": BIGGER}
ROUNDS = int(os.environ.get("LLMCTL_BENCH_ROUNDS", "5"))
THREADS = int(os.environ.get("LLMCTL_BENCH_THREADS", "1"))  # see test_bench_prefix_cache.py


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def decode_setup(spec: dict, batch: int, context: int, block_size: int = 16):
    """An engine whose `batch` sequences hold `context` computed tokens each, their blocks
    scattered over the pool as a busy server's are; returns (engine, decode chunks)."""
    from llmctl.serve.engine import Engine
    from llmctl.serve.sequence import SamplingParams, Sequence

    model = K.tiny_model(spec)
    per_seq = -(-(context + 1) // block_size)
    eng = Engine(model, block_size=block_size, num_blocks=batch * per_seq + 1, max_seqs=batch,
                 prefix_caching=False)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(batch * per_seq, generator=g).tolist()
    eng.cache.free = order  # blocks handed out in a shuffled order
    for c in eng.cache.k + eng.cache.v:
        c.normal_(generator=g)
    seqs = []
    for _ in range(batch):
        s = Sequence(torch.randint(0, spec["vocab_size"], (context + 1,), generator=g).tolist(),
                     SamplingParams(max_tokens=1))
        assert eng.cache.reserve(s, context + 1)
        s.num_computed = context
        seqs.append(s)
    return eng, [(s, 1) for s in seqs]


def step_seconds(eng, chunks, mode: str, steps: int) -> float:
    eng.runner.attention = mode
    with torch.inference_mode():
        eng.runner.forward(chunks)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            eng.runner.forward(chunks)
    return (time.perf_counter() - t0) / steps


def compare(spec: dict, batch: int, context: int) -> dict:
    eng, chunks = decode_setup(spec, batch, context)
    steps = max(2, min(20, 4096 // (batch * max(context // 128, 1))))
    modes = ["gather", "blockwise", "auto"]
    times = {m: [] for m in modes}
    for r in range(ROUNDS):
        for mode in modes[r % 3:] + modes[:r % 3]:  # each mode first in turn
            times[mode].append(step_seconds(eng, chunks, mode, steps))
    med = {m: statistics.median(v) for m, v in times.items()}
    return {"batch": batch, "context": context, "steps_per_round": steps, "rounds": ROUNDS,
            "gather_tokens_per_s": round(batch / med["gather"], 1),
            "blockwise_tokens_per_s": round(batch / med["blockwise"], 1),
            "auto_tokens_per_s": round(batch / med["auto"], 1),
            "blockwise_over_gather": round(med["gather"] / med["blockwise"], 3),
            "load_average": round(os.getloadavg()[0], 2)}


@pytest.mark.parametrize("context", [128, 1024, 2048])
@pytest.mark.parametrize("batch", [1, 16, 64])
@pytest.mark.parametrize("shape", ["tiny", "bigger"])
def test_paged_attention_decode(benchmark, shape, batch, context):
    stats = benchmark.pedantic(compare, args=(SHAPES[shape], batch, context), rounds=1, iterations=1)
    benchmark.extra_info.update(stats, shape=shape)
    print(f"\n{shape} B={batch} L={context}: gather {stats['gather_tokens_per_s']} tok/s, blockwise "
          f"{stats['blockwise_tokens_per_s']} tok/s, blockwise/gather {stats['blockwise_over_gather']}, "
          f"auto {stats['auto_tokens_per_s']} tok/s (load {stats['load_average']})")
    assert stats["gather_tokens_per_s"] > 0 and stats["blockwise_tokens_per_s"] > 0


@pytest.mark.parametrize("segment_kib", [256, 1024, 4096, 16384])
def test_segment_size(benchmark, monkeypatch, segment_kib):
    from llmctl.serve import paged

    monkeypatch.setattr(paged, "SEGMENT_BYTES", segment_kib * 1024)
    stats = benchmark.pedantic(compare, args=(BIGGER, 64, 2048), rounds=1, iterations=1)
    benchmark.extra_info.update(stats, segment_kib=segment_kib)
    print(f"\nsegment {segment_kib} KiB, bigger B=64 L=2048: blockwise {stats['blockwise_tokens_per_s']} tok/s, "
          f"blockwise/gather {stats['blockwise_over_gather']} (load {stats['load_average']})")
    assert stats["blockwise_tokens_per_s"] > 0
