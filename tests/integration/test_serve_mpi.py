"""The server on two MPI ranks (tensor parallel, mpiexec from the venv's MPICH):
greedy outputs equal one rank's; a worker rank that stops answering turns
/health unhealthy and fails the in-flight request within seconds."""

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
PROMPTS = ["def f(x):", "import os\n", "class A:\n    pass", "x = [1, 2, 3]"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


def answers(url):
    return [httpx.post(url + "/v1/completions", timeout=60, json={
        "prompt": p, "max_tokens": 16, "temperature": 0, "ignore_eos": True}).json()["choices"][0]["text"]
        for p in PROMPTS]


@pytest.mark.mpi
def test_two_tensor_parallel_ranks_match_one_and_a_lost_rank_fails_fast(artifact):
    needs("mpi", MPIEXEC.exists(), "pip install mpi4py mpich")
    with K.Server(artifact) as one:
        want = answers(one.url)
    two = K.Server(artifact, cmd=[str(MPIEXEC), "-n", "2"], env={"LLMCTL_MPI_TIMEOUT_S": "2"})
    stopped = None
    try:
        two.wait(90)
        health = httpx.get(two.url + "/health").json()
        assert health["ranks"] == 2
        assert answers(two.url) == want

        # a long request in flight, then rank 1 stops answering (SIGSTOP: alive but silent)
        events: list[str] = []
        first = threading.Event()

        def stream():
            with httpx.stream("POST", two.url + "/v1/completions", timeout=60, json={
                    "prompt": "x", "max_tokens": 240, "ignore_eos": True, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        events.append(line)
                        first.set()

        t = threading.Thread(target=stream)
        t.start()
        assert first.wait(30)
        stopped = health["rank_pids"][1]
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.monotonic()
        t.join(30)
        assert not t.is_alive(), "the in-flight request hung"
        assert time.monotonic() - t0 < 15
        assert events[-1] != "data: [DONE]", "the request finished before the rank was stopped"
        last = json.loads(events[-1][5:])
        assert "error" in last and "rank" in last["error"]["message"]
        h = httpx.get(two.url + "/health")
        assert h.status_code == 503 and h.json()["status"] == "unhealthy"
        r = httpx.post(two.url + "/v1/completions", json={"prompt": "y", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    finally:
        if stopped:
            os.kill(stopped, signal.SIGKILL)
        two.stop()
