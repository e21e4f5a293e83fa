"""Prefix caching through real servers on 127.0.0.1: a second request sharing a header
takes the header's blocks (hits counted exactly in /metrics, parsed by prometheus_client)
and answers what a server started with --no-prefix-caching answers; the same across two
tensor-parallel MPI ranks, whose worker holds the cached blocks' K/V shards too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import needs

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

HEADER = list(range(20, 60))            # 40 tokens: two whole 16-token blocks (the default block size)
A, B = HEADER + [7, 8, 9], HEADER + [100, 101]
MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


def counters(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    for name in ("llmctl_prefix_cache_queries", "llmctl_prefix_cache_hits", "llmctl_computed_tokens"):
        assert fams[name].type == "counter", name
    assert fams["llmctl_kv_cache_usage_ratio"].type == "gauge"
    return {s.name: s.value for f in fams.values() for s in f.samples if not s.labels}


def complete(url: str, prompt: list[int]) -> list[int]:
    r = httpx.post(url + "/v1/completions", timeout=60, json={
        "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "return_token_ids": True})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def two_requests(url: str) -> tuple[list, list[dict]]:
    """A, then B (sharing A's header); the answers and the counters after each."""
    outs, seen = [], []
    for p in (A, B):
        outs.append(complete(url, p))
        seen.append(counters(url))
    return outs, seen


def test_a_shared_header_is_computed_once_and_answers_the_same(artifact):
    with K.Server(artifact, "--no-prefix-caching") as off:
        want, off_seen = two_requests(off.url)
    with K.Server(artifact) as on:
        got, seen = two_requests(on.url)
    assert got == want
    assert off_seen[-1]["llmctl_prefix_cache_queries_total"] == off_seen[-1]["llmctl_prefix_cache_hits_total"] == 0
    first, second = seen
    assert first["llmctl_prefix_cache_hits_total"] == 0
    assert first["llmctl_prefix_cache_queries_total"] == len(A)
    assert second["llmctl_prefix_cache_hits_total"] == 32
    assert second["llmctl_prefix_cache_queries_total"] == len(A) + len(B)
    # the model ran 32 tokens fewer; the decodes (7 per request) are the same either way
    assert off_seen[-1]["llmctl_computed_tokens_total"] - second["llmctl_computed_tokens_total"] == 32
    assert second["llmctl_kv_cache_usage_ratio"] == 0  # cached blocks nobody holds count as free


@pytest.mark.mpi
def test_two_tensor_parallel_ranks_share_cached_prefixes(artifact):
    needs("mpi", MPIEXEC.exists(), "pip install mpi4py mpich")
    with K.Server(artifact, "--no-prefix-caching") as one:
        want, _ = two_requests(one.url)
    two = K.Server(artifact, cmd=[str(MPIEXEC), "-disable-auto-cleanup", "-n", "2"])
    try:
        two.wait(90)
        assert httpx.get(two.url + "/health").json()["ranks"] == 2
        got, seen = two_requests(two.url)
    finally:
        print(two.stop())  # shown by pytest when the test fails
    assert got == want
    assert seen[-1]["llmctl_prefix_cache_hits_total"] == 32
