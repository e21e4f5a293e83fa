"""`llmctl eval` scoring through HTTP vs in process (CPU): multiple-choice
loglikelihood requests per second on a tiny artifact loaded in process
(`--artifact`) and on the same artifact behind `llmctl serve` (`--endpoint`,
echo + logprobs, 8 requests in flight). Run with `make bench`; the rates land
in each benchmark's extra_info."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

import servekit as K  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    art = K.tiny_artifact(tmp_path_factory.mktemp("evalhttp"))
    with K.Server(art, "--max-batch-tokens", "2048") as server:
        yield art, server


@pytest.fixture(scope="module")
def requests():
    from llmctl.eval import tasks as T

    _, (task,) = T.load_suite(None, "code_completion")
    return [(T.fewshot_context(task, i, 0), c) for i, d in enumerate(task.docs()[:30])
            for c in T.choices_of(task, d)]


def _bench(benchmark, lm, requests):
    out = benchmark.pedantic(lm.loglikelihood, args=(requests,), rounds=3, iterations=1)
    assert len(out) == len(requests) and all(lp < 0 for lp, _ in out)
    benchmark.extra_info["requests_per_s"] = len(requests) / benchmark.stats.stats.mean


def test_artifact_loglikelihood_requests_per_s(benchmark, served, requests):
    from llmctl.eval.artifact import ArtifactLM

    _bench(benchmark, ArtifactLM(served[0], batch_size=8), requests)


def test_endpoint_loglikelihood_requests_per_s(benchmark, served, requests):
    from llmctl.eval.endpoint import EndpointLM

    art, server = served
    _bench(benchmark, EndpointLM(server.url + "/v1", art, batch_size=8), requests)
