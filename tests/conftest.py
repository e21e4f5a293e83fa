"""Shared fixtures and the skip policy.

A test that needs SLURM, MPI or a GPU skips cleanly where it is missing; CI sets
LLMCTL_REQUIRE_SLURM=1 / LLMCTL_REQUIRE_MPI=1 so that those skips become failures
for what CI can run. Use `needs("slurm", available, why)` rather than pytest.skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def needs(what: str, available: bool, why: str = "") -> None:
    """Skip unless `available`; fail instead when LLMCTL_REQUIRE_<WHAT>=1 is set."""
    if available:
        return
    msg = f"{what} not available{': ' + why if why else ''}"
    if os.environ.get(f"LLMCTL_REQUIRE_{what.upper()}", "") not in ("", "0"):
        pytest.fail(f"{msg} (LLMCTL_REQUIRE_{what.upper()} is set)")
    pytest.skip(msg)


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `llmctl` entry point in a subprocess (as a user would)."""
    full_env = dict(os.environ)
    full_env.pop("LLMCTL_DEBUG", None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "llmctl", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    """Call the CLI in a subprocess: cli('site', 'list', cwd=...)."""
    return run_cli


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test inside an empty temporary folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def _spin() -> None:  # pragma: no cover - runs in the load processes
    while True:
        pass


@pytest.fixture(scope="session", autouse=True)
def machine_load():
    """`LLMCTL_TEST_LOAD=N`: keep N processes spinning on the CPU for the whole session.

    Tests must not depend on how fast the machine is; running the suite once idle and
    once with every core busy (`LLMCTL_TEST_LOAD=$(nproc) make test`) shows that they
    don't. The spinners are plain busy loops (what `stress --cpu N` does), at normal
    priority so that they really compete with the tests.
    """
    n = int(os.environ.get("LLMCTL_TEST_LOAD", "0") or 0)
    with spinning(n):
        yield max(n, 0)


@contextlib.contextmanager
def spinning(n: int):
    """`n` busy-loop processes for the duration (the load of `LLMCTL_TEST_LOAD`; the thread
    policy benchmark uses it for other jobs' work on a shared node)."""
    if n <= 0:
        yield []
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.join(5)


# `make test` runs the suite on two pytest-xdist workers (--dist loadgroup). Each test file
# is one unit of work, so its module fixtures (a trained run, a server) are built once, on one
# worker. The files that submit to the local SLURM cluster form one unit between them: they run
# one after another on one worker, as the cluster's two partitions and the multi-node tests' node
# failures (one takes node2's link down) would otherwise break each other's jobs, while the other
# worker takes unit tests and the integration tests without SLURM. A file that uses the `slurm`
# or `multinode` marker must be listed here (tests/unit/test_test_layout.py checks it).
CLUSTER_FILES = {
    "test_bwrap_site.py", "test_eval_runs.py", "test_hw_benchmark.py", "test_multinode.py",
    "test_multinode_jobs.py", "test_parallel_train.py", "test_serve_batch.py", "test_site_init_slurm.py",
    "test_slurm_jobs.py", "test_slurm_pbs_mpi.py", "test_slurm_preflight.py", "test_train_slurm.py",
}


def pytest_xdist_make_scheduler(config, log):
    """The units above, scheduled by xdist's scope scheduler. Not xdist_group markers: xdist 3.8
    turns them into a node-id suffix through `item._nodeid`, which pytest 9 no longer reads, so
    no group applied and two workers ran multi-node tests side by side."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ClusterScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "slurm-cluster" if Path(path).name in CLUSTER_FILES else path

    return ClusterScheduling(config, log)
