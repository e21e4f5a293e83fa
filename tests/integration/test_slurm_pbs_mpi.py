"""PBS scripts (both dialects) and MPI jobs on the real local SLURM cluster.

SLURM's sbatch reads `#PBS` directives when a script has no `#SBATCH` lines, so
the PBS scripts llmctl renders are checked with `sbatch --test-only` and run.
MPI: two real mpi4py ranks under mpirun (MPICH from the venv) and under srun.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import needs, run_cli
from jobsupport import VENV_BIN, slurm_up, wait_state, write_plan, write_site

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture
def cli(tmp_path):
    needs("slurm", slurm_up(), "start it with `bash scripts/slurm-local.sh up`")

    def call(*args, **kw):
        return run_cli(*args, cwd=tmp_path, env={"LLMCTL_STATE_DIR": str(tmp_path / "state")}, **kw)
    return call


def sacct_state(job_id: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"],
                             capture_output=True, text=True).stdout.split()
        if out and out[0] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            return out[0]
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.parametrize("dialect", ["pbspro", "torque"])
def test_pbs_script_passes_test_only_and_runs(cli, tmp_path, dialect):
    site = write_site(tmp_path, name=f"pbs-{dialect}", scheduler="pbs", launcher="mpirun",
                      env={"STANDIN_MPI": "1"}, extra=f'pbs_dialect = "{dialect}"\nmpirun = "{VENV_BIN}/mpiexec"')
    run = tmp_path / "runs" / dialect
    r = cli("train", "launch", "--plan", str(write_plan(tmp_path, 2)), "--launcher", "pbs",
            "--site", str(site), "--run-dir", str(run), "--dry-run")
    assert r.returncode == 0, r.stderr
    script = (run / "job.sh").read_text()
    assert ("select=1" in script) == (dialect == "pbspro") and ("nodes=1:ppn=2" in script) == (dialect == "torque")
    test = subprocess.run(["sbatch", "--test-only", str(run / "job.sh")], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    out = subprocess.run(["sbatch", "--parsable", str(run / "job.sh")], capture_output=True, text=True, check=True)
    assert sacct_state(out.stdout.strip().split(";")[0]) == "COMPLETED"
    log = (run / "logs" / "pbs.out").read_text()
    assert "standin-mpi: rank 0 of 2 sum 3" in log and "standin-mpi: rank 1 of 2 sum 3" in log


@pytest.mark.mpi
@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_mpi_ranks_under_slurm(cli, tmp_path, launcher):
    # srun talks PMI-2 to MPICH; SLURM_MPI_TYPE is srun's --mpi from the environment.
    env = {"STANDIN_MPI": "1", "SLURM_MPI_TYPE": "pmi2"}
    site = write_site(tmp_path, launcher=launcher, env=env, extra=f'mpirun = "{VENV_BIN}/mpiexec"')
    run = tmp_path / "runs" / launcher
    r = cli("train", "launch", "--plan", str(write_plan(tmp_path, 2)), "--launcher", "slurm",
            "--site", str(site), "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert wait_state(cli, run)["state"] == "COMPLETED"
    out = cli("job", "logs", str(run)).stdout
    assert "standin-mpi: rank 0 of 2 sum 3" in out and "standin-mpi: rank 1 of 2 sum 3" in out
