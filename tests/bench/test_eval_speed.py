"""`llmctl eval` scoring speed on a tiny checkpoint (CPU): multiple-choice loglikelihood
requests per second and perplexity tokens per second. Run with `make bench`; the rates
land in each benchmark's extra_info."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("h5py")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from trainkit import TINY_MODEL, make_project, make_run, prepare_data, run_train  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from llmctl.eval.lm import CheckpointLM

    root = make_project(tmp_path_factory.mktemp("evalbench") / "p", docs=60,
                        model={**TINY_MODEL, "hidden": 64, "ffn": 128})
    prepare_data(root)
    run = make_run(root, "r", steps=2, interval=2, eval_interval=2)
    assert run_train(run).returncode == 0
    return CheckpointLM(run, batch_size=16)


def test_multiple_choice_requests_per_s(benchmark, lm):
    from llmctl.eval import tasks as T

    _, (task,) = T.load_suite(None, "code_completion")
    reqs = [(T.fewshot_context(task, i, 0), c) for i, d in enumerate(task.docs()) for c in T.choices_of(task, d)]
    out = benchmark(lm.loglikelihood, reqs)
    assert len(out) == len(reqs)
    benchmark.extra_info["requests_per_s"] = len(reqs) / benchmark.stats.stats.mean


def test_perplexity_tokens_per_s(benchmark, lm):
    ids = list(range(1, 500)) * 9  # 4491 tokens
    out = benchmark(lm.token_nll, ids)
    assert sum(n for _, n in out) == len(ids)
    benchmark.extra_info["tokens_per_s"] = len(ids) / benchmark.stats.stats.mean
