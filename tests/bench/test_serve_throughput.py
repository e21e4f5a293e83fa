"""Continuous batching (vllm-like) against static batching (fcfs) under load: 64
concurrent clients, each sending its next request as soon as the last is answered,
for a fixed time, through the real HTTP server, with long-tailed output lengths. Reported in extra_info: requests,
tokens/s, p50/p99 latency. Run with `make bench`; not a pass/fail gate on speed."""

from __future__ import annotations

import concurrent.futures as cf
import random
import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

httpx = pytest.importorskip("httpx")
CLIENTS, SECONDS = 64, 15.0


def output_length(rng: random.Random) -> int:
    """Long-tailed, as chat traffic is (most answers short, a few long): 80 % of
    requests want 8-32 tokens, 20 % want 160-200."""
    return rng.randint(8, 32) if rng.random() < 0.8 else rng.randint(160, 200)


def load(url: str) -> dict:
    end = time.monotonic() + SECONDS

    def client(i: int):
        rng = random.Random(i)
        lat, toks, n = [], 0, 0
        with httpx.Client(timeout=120) as c:
            while time.monotonic() < end:
                t0 = time.monotonic()
                r = c.post(url + "/v1/completions", json={
                    "prompt": "def f(x):" * rng.randint(1, 8), "max_tokens": output_length(rng),
                    "temperature": 0, "ignore_eos": True})
                r.raise_for_status()
                lat.append(time.monotonic() - t0)
                toks += r.json()["usage"]["completion_tokens"]
                n += 1
        return lat, toks, n

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(CLIENTS) as pool:
        res = list(pool.map(client, range(CLIENTS)))
    wall = time.monotonic() - t0
    lat = sorted(x for r in res for x in r[0])
    return {"requests": sum(r[2] for r in res), "tokens_per_s": sum(r[1] for r in res) / wall,
            "p50_s": statistics.median(lat), "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "clients": CLIENTS, "seconds": round(wall, 1)}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


@pytest.mark.parametrize("scheduler", ["vllm-like", "fcfs"])
def test_serve_throughput_64_clients(benchmark, artifact, scheduler):
    with K.Server(artifact, "--scheduler", scheduler, "--max-batch-tokens", "512") as s:
        stats = benchmark.pedantic(load, args=(s.url,), rounds=1, iterations=1)
    benchmark.extra_info.update(stats)
    print(f"\n{scheduler}: {stats}")
    assert stats["requests"] >= CLIENTS  # every client was answered at least once
