"""Pre-flight on the real local SLURM cluster: `sbatch --test-only` of the exact script,
and unprepared data, refuse a job before anything is queued."""

from __future__ import annotations

import subprocess

import pytest

from conftest import needs, run_cli
from jobsupport import slurm_up, write_plan, write_site

pytestmark = [pytest.mark.slurm]


@pytest.fixture
def cli(tmp_path):
    needs("slurm", slurm_up(), "start it with `bash scripts/slurm-local.sh up`")

    def call(*args, **kw):
        return run_cli(*args, cwd=tmp_path, env={"LLMCTL_STATE_DIR": str(tmp_path / "state"),
                                                  "XDG_CONFIG_HOME": str(tmp_path / "xdg")}, **kw)
    return call


def queued(name: str) -> str:
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout.strip()


def test_sbatch_test_only_refuses_what_slurm_would(cli, tmp_path):
    site = write_site(tmp_path, name="pfslurm", extra='extra_directives = ["--constraint=nosuchfeature"]')
    name = f"pf-{tmp_path.name}"[:40]
    r = cli("train", "launch", "--plan", str(write_plan(tmp_path)), "--launcher", "slurm", "--site", str(site),
            "--name", name, "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "sbatch --test-only" in ln)
    assert "feature" in line.lower(), r.stderr
    assert not (tmp_path / "run" / "submission.json").exists()
    assert queued(name) == ""


def test_sbatch_test_only_passes_a_good_script(tmp_path):
    needs("slurm", slurm_up(), "start it with `bash scripts/slurm-local.sh up`")
    from llmctl.jobs.launch import prepare_train_job
    from llmctl.jobs.preflight import problems

    site = write_site(tmp_path, name="pfgood")
    run, dry = prepare_train_job(plan_path=str(write_plan(tmp_path)), launcher="slurm", site=str(site),
                                 run_dir=str(tmp_path / "run"))
    assert problems(run, dry.spec) == []


def test_unprepared_data_is_not_queued(cli, tmp_path):
    site = write_site(tmp_path, name="pfdata")
    (tmp_path / "data.toml").write_text('[[sources]]\ntype = "stdlib"\n')
    name = f"pfd-{tmp_path.name}"[:40]
    r = cli("train", "launch", "--plan", str(write_plan(tmp_path)), "--data", str(tmp_path / "data.toml"),
            "--launcher", "slurm", "--site", str(site), "--name", name, "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "holds no prepared data" in r.stderr, r.stderr
    assert queued(name) == ""
