"""The trainer sizes torch's threads by the job's CPUs (llmctl/hw/threads.py), prints the
count and its source at start and records it in the start record; the training config's
`training.threads` overrides the environment. The policy's order is unit-tested
(tests/unit/test_thread_policy.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from trainkit import make_project, make_run, prepare_data, records, train_cmd  # noqa: E402


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("threads"))
    prepare_data(root)
    return root


def train(run: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE", "LLMCTL_DEBUG")}
    full.update(TOKENIZERS_PARALLELISM="false", **env)
    r = subprocess.run(train_cmd(run), cwd=run, env=full, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_the_config_overrides_the_environment(project):
    run = make_run(project, "configured", steps=2, extra="threads = 2\n")
    r = train(run, OMP_NUM_THREADS="1")
    assert "llmctl.train: 2 torch threads (the training config's training.threads)" in r.stderr
    assert records(run, "start")[0]["threads"] == 2


def test_the_jobs_cpus_not_the_machines(project):
    run = make_run(project, "slurm", steps=2)
    r = train(run, SLURM_CPUS_PER_TASK="1")
    assert "llmctl.train: 1 torch threads (SLURM_CPUS_PER_TASK)" in r.stderr
    assert records(run, "start")[0]["threads"] == 1
    run = make_run(project, "omp", steps=2)
    r = train(run, OMP_NUM_THREADS="1", SLURM_CPUS_PER_TASK="2")
    assert "llmctl.train: 1 torch threads (OMP_NUM_THREADS)" in r.stderr


def test_threads_zero_is_refused_by_key(project):
    run = make_run(project, "zero", steps=2, extra="threads = 0\n")
    r = subprocess.run(train_cmd(run), cwd=run, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "training.threads" in r.stderr
