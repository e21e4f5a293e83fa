"""The server on two MPI ranks (mpiexec from the venv's MPICH): tensor parallel
greedy outputs equal one rank's; a worker rank that stops answering (SIGSTOP) or
is killed (SIGKILL) turns /health unhealthy and fails the in-flight request
within seconds, while rank 0's HTTP server stays up to say so. The in-flight
request holds the engine after its first token (test hooks), so it cannot finish
before the rank is lost, however fast the machine."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import needs

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

httpx = pytest.importorskip("httpx")
MPIEXEC = Path(sys.executable).parent / "mpiexec"
# As the rendered serve jobs run it: without this flag hydra kills every rank when one dies.
MPI_CMD = [str(MPIEXEC), "-disable-auto-cleanup", "-n", "2"]
PROMPTS = ["def f(x):", "import os\n", "class A:\n    pass", "x = [1, 2, 3]"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


def concurrent_answers(url, prompts):
    """Greedy completions of `prompts`, all in flight at once."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p):
        r = httpx.post(url + "/v1/completions", timeout=60, json={
            "prompt": p, "max_tokens": 12, "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, prompts))


def replica_counts(url) -> dict[str, float]:
    """llmctl_replica_requests_total by rank, from /metrics."""
    import re

    text = httpx.get(url + "/metrics", timeout=5).text
    found = re.findall(r'llmctl_replica_requests_total\{rank="(\d+)"\} (\S+)', text)
    return {rank: float(n) for rank, n in found}


def answers(url):
    return [httpx.post(url + "/v1/completions", timeout=60, json={
        "prompt": p, "max_tokens": 16, "temperature": 0, "ignore_eos": True}).json()["choices"][0]["text"]
        for p in PROMPTS]


def stream_in_background(url: str, events: list, first: threading.Event) -> threading.Thread:
    """A streamed request in a thread that holds its engine after its first token (until
    POST /_test/release): its `data:` lines (or a transport error) go to `events`."""
    def stream():
        try:
            with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
                    "prompt": "x", "max_tokens": 240, "ignore_eos": True, "stream": True,
                    "llmctl_test": "hold"}) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        events.append(line)
                        first.set()
        except httpx.HTTPError as e:  # a dropped connection is what this test must not see
            events.append(f"transport error: {e!r}")
            first.set()

    t = threading.Thread(target=stream)
    t.start()
    return t


@pytest.mark.mpi
def test_two_tensor_parallel_ranks_match_one_and_a_lost_rank_fails_fast(artifact):
    needs("mpi", MPIEXEC.exists(), "pip install mpi4py mpich")
    with K.Server(artifact) as one:
        want = answers(one.url)
    two = K.Server(artifact, cmd=MPI_CMD, env={"LLMCTL_MPI_TIMEOUT_S": "2", **K.TEST_HOOKS})
    stopped = None
    try:
        two.wait(90)
        health = httpx.get(two.url + "/health").json()
        assert health["ranks"] == 2
        assert answers(two.url) == want

        # a long request in flight, then rank 1 stops answering (SIGSTOP: alive but silent)
        events: list[str] = []
        first = threading.Event()
        t = stream_in_background(two.url, events, first)
        assert first.wait(30)
        stopped = health["rank_pids"][1]
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.monotonic()
        t.join(30)
        assert not t.is_alive(), "the in-flight request hung"
        assert time.monotonic() - t0 < 15
        assert events[-1] != "data: [DONE]", "the held request finished"
        last = json.loads(events[-1][5:])
        assert "error" in last and "rank" in last["error"]["message"]
        h = httpx.get(two.url + "/health")
        assert h.status_code == 503 and h.json()["status"] == "unhealthy"
        r = httpx.post(two.url + "/v1/completions", json={"prompt": "y", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    finally:
        if stopped:
            os.kill(stopped, signal.SIGKILL)
        print(two.stop())  # shown by pytest when the test fails


@pytest.mark.mpi
def test_a_killed_worker_rank_fails_requests_and_health_while_rank0_stays_up(artifact, tmp_path):
    needs("mpi", MPIEXEC.exists(), "pip install mpi4py mpich")
    two = K.Server(artifact, cmd=MPI_CMD, env={"LLMCTL_MPI_TIMEOUT_S": "2", "LLMCTL_RUN_DIR": str(tmp_path),
                                               **K.TEST_HOOKS})
    killed = None
    try:
        two.wait(90)
        health = httpx.get(two.url + "/health").json()
        assert health["ranks"] == 2
        events: list[str] = []
        first = threading.Event()
        t = stream_in_background(two.url, events, first)
        assert first.wait(30)
        killed = health["rank_pids"][1]
        os.kill(killed, signal.SIGKILL)
        t0 = time.monotonic()
        t.join(30)
        assert not t.is_alive(), "the in-flight request hung"
        assert time.monotonic() - t0 < 15
        assert not events[-1].startswith("transport error"), f"rank 0 went down with rank 1: {events[-1]}"
        assert events[-1] != "data: [DONE]", "the held request finished"
        last = json.loads(events[-1][5:])
        assert "error" in last and "rank" in last["error"]["message"], last
        # rank 0 is still serving HTTP, and says it is unhealthy
        h = httpx.get(two.url + "/health", timeout=5)
        assert h.status_code == 503 and h.json()["status"] == "unhealthy"
        assert "rank" in h.json()["error"]
        r = httpx.post(two.url + "/v1/completions", json={"prompt": "y", "max_tokens": 2}, timeout=5)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        m = httpx.get(two.url + "/metrics", timeout=5).text
        assert "llmctl_healthy 0" in m
    finally:
        out = two.stop()
        print(out)  # shown by pytest when the test fails
    assert two.proc.returncode is not None, out


@pytest.mark.mpi
def test_two_data_parallel_replicas_match_one_rank_and_share_the_load(artifact):
    needs("mpi", MPIEXEC.exists(), "pip install mpi4py mpich")
    prompts = PROMPTS + ["for i in range(3):", "return None", "with open(p) as f:", "# comment"]
    with K.Server(artifact) as one:
        want = concurrent_answers(one.url, prompts)
    two = K.Server(artifact, "--mpi-mode", "dp", cmd=MPI_CMD, env={"LLMCTL_MPI_TIMEOUT_S": "2", **K.TEST_HOOKS})
    try:
        two.wait(90)
        assert httpx.get(two.url + "/health").json()["ranks"] == 2
        assert concurrent_answers(two.url, prompts) == want
        served = replica_counts(two.url)
        assert set(served) == {"0", "1"} and sum(served.values()) == len(prompts)
        assert served["0"] > 0 and served["1"] > 0, served

        # Two held streams: the router puts one on each replica; then rank 1 is killed.
        rank1 = httpx.get(two.url + "/health").json()["rank_pids"][1]
        streams = [([], threading.Event()) for _ in range(2)]
        threads = []
        for events, first in streams:
            threads.append(stream_in_background(two.url, events, first))
            assert first.wait(30)
        os.kill(rank1, signal.SIGKILL)
        assert replica_counts(two.url)["1"] == served["1"] + 1
        K.wait_until(lambda: httpx.get(two.url + "/health", timeout=5).status_code == 503, "rank 1 lost")
        httpx.post(two.url + "/_test/release", timeout=5)  # rank 0's stream may finish now
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "an in-flight request hung"
        lasts = [events[-1] for events, _ in streams]
        assert not any(e.startswith("transport error") for e in lasts), lasts
        # rank 1's stream failed; rank 0's, released, finished
        failed = [json.loads(e[5:]) for e in lasts if e != "data: [DONE]"]
        assert len(failed) == 1 and "rank" in failed[0]["error"]["message"], lasts
        h = httpx.get(two.url + "/health", timeout=5)
        assert h.status_code == 503 and "rank 1" in h.json()["error"]
    finally:
        print(two.stop())  # shown by pytest when the test fails


@pytest.mark.mpi
def test_tensor_parallel_ranks_with_blockwise_paged_attention_match_one_rank(artifact, tmp_path):
    """serve config paged_attention = "blockwise" on 2 tensor-parallel ranks (each reads its
    own KV heads from its own pool): the one-rank gather path's greedy answers."""
    needs("mpi", MPIEXEC.exists(), "pip install mpi4py mpich")
    conf = {}
    for mode in ("gather", "blockwise"):
        conf[mode] = tmp_path / f"{mode}.toml"
        conf[mode].write_text(f'paged_attention = "{mode}"\n')
    with K.Server(artifact, "--config", str(conf["gather"])) as one:
        want = concurrent_answers(one.url, PROMPTS)
    two = K.Server(artifact, "--config", str(conf["blockwise"]), cmd=MPI_CMD, env={"LLMCTL_MPI_TIMEOUT_S": "10"})
    try:
        two.wait(90)
        assert httpx.get(two.url + "/health").json()["ranks"] == 2
        assert concurrent_answers(two.url, PROMPTS) == want
    finally:
        log = two.stop()
        print(log)  # shown by pytest when the test fails
    assert "paged_attention" in log and "blockwise" in log  # the resolved settings, as printed
