"""MPI and local jobs without a batch system: mpirun over a hostfile, torchrun-free
single processes, started in their own process group so that cancel stops them."""

from __future__ import annotations

import json
import time

import pytest

from conftest import needs, run_cli, have
from jobsupport import VENV_BIN, wait_for_text, wait_state, write_plan, write_site

pytestmark = [pytest.mark.mpi]


@pytest.fixture
def cli(tmp_path):
    def call(*args, **kw):
        return run_cli(*args, cwd=tmp_path, env={"LLMCTL_STATE_DIR": str(tmp_path / "state")}, **kw)
    return call


def test_mpi_job_runs_two_real_ranks(cli, tmp_path):
    needs("mpi", (VENV_BIN / "mpiexec").exists(), "pip install mpi4py mpich")
    site = write_site(tmp_path, name="mpisite", scheduler="mpi", launcher="mpirun",
                      env={"STANDIN_MPI": "1"}, extra=f'mpirun = "{VENV_BIN}/mpiexec"')
    run = tmp_path / "runs" / "mpi"
    r = cli("train", "launch", "--plan", str(write_plan(tmp_path, 2)), "--launcher", "mpi",
            "--site", str(site), "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert wait_state(cli, run, timeout=60)["state"] == "COMPLETED"
    out = cli("job", "logs", str(run)).stdout
    assert "standin-mpi: rank 0 of 2 sum 3" in out and "standin-mpi: rank 1 of 2 sum 3" in out


def test_local_job_completes_and_cancel_stops_it(cli, tmp_path):
    site = write_site(tmp_path, name="loc", scheduler="local", launcher="torchrun",
                      env={"STANDIN_STEPS": "1000", "STANDIN_STEP_S": "1"})
    run = tmp_path / "runs" / "loc"
    # one rank: a single process, no torchrun needed
    r = cli("train", "launch", "--plan", str(write_plan(tmp_path, 1)), "--launcher", "local",
            "--site", str(site), "--run-dir", str(run), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert cli("job", "submit", str(run)).returncode == 0
    wait_for_text(lambda: [run / "logs" / "job.out"], "standin: ready", timeout=30)
    t0 = time.monotonic()
    c = cli("job", "cancel", str(run), timeout=30)
    assert c.returncode == 0 and "CANCELLED" in c.stdout
    pid = int(json.loads((run / "submission.json").read_text())["job_id"])
    from pathlib import Path
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    assert time.monotonic() - t0 < 30
