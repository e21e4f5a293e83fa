"""Prefix caching on against off on an eval-style workload: 64 requests that share a
200-token header (a few-shot prompt, an eval context) and differ in a short tail, all
submitted at once to the engine of the tiny artifact, greedy, 16 tokens each. On and off
run alternately (interleaved repetitions, a fresh engine each: the cache starts cold
every time), outputs compared token for token. Reported in extra_info: the median
seconds of each, the speed-up, prompt tokens computed and the hit rate. Run with
`make bench`; not a pass/fail gate on speed."""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

torch = pytest.importorskip("torch")

REQUESTS, HEADER, MAX_TOKENS, REPEATS = 64, 200, 16, 5


# One intra-op thread unless told otherwise: on a small machine shared with other work,
# torch's default (every core) oversubscribes it and the timings measure the contention.
THREADS = int(os.environ.get("LLMCTL_BENCH_THREADS", "1"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def workload(vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    header = [rng.randrange(vocab) for _ in range(HEADER)]
    return [header + [rng.randrange(vocab) for _ in range(rng.randint(8, 24))] for _ in range(REQUESTS)]


def run(art, prompts, prefix_caching: bool) -> tuple[float, list[list[int]], dict]:
    from llmctl.serve.engine import Engine
    from llmctl.serve.sequence import SamplingParams

    eng = Engine.from_artifact(art, prefix_caching=prefix_caching)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    t0 = time.perf_counter()
    outs = eng.generate(prompts, params)
    return time.perf_counter() - t0, [o.output_ids for o in outs], dict(eng.stats)


def test_prefix_cache_on_vs_off_shared_header(benchmark, artifact):
    from llmctl.export.hf import load_artifact

    art = load_artifact(str(artifact), dtype="fp32", device="cpu")
    prompts = workload(art.model.cfg.vocab_size)
    run(art, prompts[:4], True)  # warm-up: first-call allocations out of the timings
    times = {True: [], False: []}
    outs, stats = {}, {}

    def interleaved():
        for _ in range(REPEATS):
            for on in (True, False):
                seconds, outs[on], stats[on] = run(art, prompts, on)
                times[on].append(seconds)

    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    assert outs[True] == outs[False]  # the cache changes what is computed, not the answers
    on, off = statistics.median(times[True]), statistics.median(times[False])
    info = {
        "requests": REQUESTS, "header_tokens": HEADER, "max_tokens": MAX_TOKENS, "repeats": REPEATS,
        "on_s": round(on, 3), "off_s": round(off, 3), "speedup": round(off / on, 2),
        "computed_tokens_on": stats[True]["computed_tokens"], "computed_tokens_off": stats[False]["computed_tokens"],
        "hit_rate": round(stats[True]["prefix_cache_hits"] / stats[True]["prefix_cache_queries"], 3),
        "threads": torch.get_num_threads(),
    }
    benchmark.extra_info.update(info)
    print(f"\nprefix cache on vs off: {info}")
