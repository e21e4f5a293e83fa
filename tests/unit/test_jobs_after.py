"""`--after` takes job ids and SLURM's dependency forms (after, afterok, afternotok,
afterany with colon-separated ids), nothing else; every backend honours it or says
it cannot: SLURM `--dependency`, PBS `-W depend=`, local and MPI jobs wait for the
named local job, Kubernetes refuses."""

from __future__ import annotations

import sys
import time

import pytest

from conftest import run_cli
from jobsites import see_tmp

PLAN = '[inputs]\nmodel = "m.json"\nnodes = 1\ngpus_per_node = 1\nglobal_batch = 1\n\n[parallelism]\ndp = 1\n'
SITES = {"slurm": "slurm-a100-ib", "pbs": "pbspro-a100", "local": "local", "mpi": "local", "k8s": "k8s-h100"}

HOSTILE = ["afterok:123; touch PWNED", "123 && touch PWNED", "$(touch PWNED)", "afterok:", "afterok:12:",
           "singleton", "aftercorr:12", "12,13", "12?13", "afterok:12,afterany:13", "1 2", "12\n13",
           "afterok:12+5", "-1", "", "afterok:abc", "afterOK:12"]


def launch(tmp_path, backend, *after, dry_run=True):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    args = [a for x in after for a in ("--after", x)]
    see_tmp(tmp_path, "slurm-a100-ib", "pbspro-a100", "k8s-h100")
    return run_cli("train", "launch", "--plan", str(plan), "--launcher", backend, "--site", SITES[backend],
                   "--run-dir", str(tmp_path / "run"), *(["--dry-run"] if dry_run else []), *args,
                   cwd=tmp_path, env={"LLMCTL_STATE_DIR": str(tmp_path / "state")})


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("backend", ["slurm", "pbs"])
def test_anything_but_job_ids_is_refused(tmp_path, backend, value):
    r = launch(tmp_path, backend, value)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "--after" in r.stderr and "job id" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists(), "nothing may be written for a refused job"
    assert not (tmp_path / "PWNED").exists()


def test_slurm_dependency_forms_render_as_given(tmp_path):
    r = launch(tmp_path, "slurm", "123", "afterany:124:125_3", " afternotok:126 ", "after:127")
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --dependency=afterok:123,afterany:124:125_3,afternotok:126,after:127\n" in r.stdout
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in r.stdout


def test_pbs_dependency_forms_render_as_given(tmp_path):
    r = launch(tmp_path, "pbs", "77.pbs01", "afternotok:78.pbs01:79[].pbs01")
    assert r.returncode == 0, r.stderr
    assert "#PBS -W 'depend=afterok:77.pbs01,afternotok:78.pbs01:79[].pbs01'\n" in r.stdout


def test_slurm_ids_are_not_pbs_ids(tmp_path):
    r = launch(tmp_path, "slurm", "77.pbs01")
    assert r.returncode == 2 and "77.pbs01" in r.stderr and "Traceback" not in r.stderr


def test_kubernetes_refuses_after_instead_of_ignoring_it(tmp_path):
    r = launch(tmp_path, "k8s", "123")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Kubernetes" in r.stderr and "--after" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("backend", ["local", "mpi"])
def test_local_after_an_unknown_job_is_refused(tmp_path, backend):
    r = launch(tmp_path, backend, "4242")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "4242" in r.stderr and "llmctl job list" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["afterok:123; touch PWNED", "12,13", "singleton"])
@pytest.mark.parametrize("backend", ["local", "mpi", "k8s"])
def test_hostile_after_is_refused_off_batch_schedulers_too(tmp_path, backend, value):
    r = launch(tmp_path, backend, value)
    assert r.returncode == 2 and "--after" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


# --- local jobs really wait ------------------------------------------------------

def _local_job(tmp_path, name, code, after=(), sleep=0.0):
    """A local job whose program sleeps, touches `<name>.ran` and exits with `code`."""
    from llmctl.jobs.launch import prepare, submit_run
    from llmctl.jobs.resolve import JobRequest

    marker = tmp_path / f"{name}.ran"
    prog = f"import pathlib, sys, time; time.sleep({sleep}); pathlib.Path({str(marker)!r}).touch(); sys.exit({code})"
    req = JobRequest(kind="eval", backend="local", run_dir=str(tmp_path / name), name=name,
                     program=["-c", prog], python=sys.executable, after=list(after))
    run, _ = prepare(req, "local")
    _, job_id = submit_run(run.path)
    return run, job_id, marker


def _final(run, timeout=30.0):
    from llmctl.jobs import track

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = track.status(str(run.path))
        if st["state"] not in ("RUNNING", "PENDING"):
            return st
        time.sleep(0.2)
    raise AssertionError(f"{run.path} did not finish: {st}")


def test_local_jobs_wait_for_the_named_job_and_check_how_it_ended(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCTL_STATE_DIR", str(tmp_path / "state"))
    first, first_id, first_ran = _local_job(tmp_path, "first", 3, sleep=1.5)
    ok, _, ok_ran = _local_job(tmp_path, "ok", 0, after=[first_id])
    notok, _, notok_ran = _local_job(tmp_path, "notok", 0, after=[f"afternotok:{first_id}"])
    anyj, _, any_ran = _local_job(tmp_path, "any", 0, after=[f"afterany:{first_id}"])
    time.sleep(0.5)
    assert not notok_ran.exists() and not any_ran.exists(), "they must wait for the first job"
    assert _final(first)["state"] == "FAILED"
    assert _final(notok)["state"] == "COMPLETED" and notok_ran.stat().st_mtime >= first_ran.stat().st_mtime
    assert _final(anyj)["state"] == "COMPLETED"
    # afterok of a failed job: never runs; cancelled, like SLURM's --kill-on-invalid-dep.
    st = _final(ok)
    assert st["state"] == "CANCELLED" and not ok_ran.exists()
    log = (ok.path / "logs" / "job.out").read_text()
    assert f"afterok:{first_id}" in log and "exit status 3" in log


def test_local_after_a_cancelled_job(tmp_path, monkeypatch):
    from llmctl.jobs import track

    monkeypatch.setenv("LLMCTL_STATE_DIR", str(tmp_path / "state"))
    first, first_id, _ = _local_job(tmp_path, "first", 0, sleep=60)
    ok, _, ok_ran = _local_job(tmp_path, "ok", 0, after=[f"afterok:{first_id}"])
    notok, _, notok_ran = _local_job(tmp_path, "notok", 0, after=[f"afternotok:{first_id}"])
    assert track.cancel(str(first.path), wait_s=20)["state"] == "CANCELLED"
    assert _final(ok)["state"] == "CANCELLED" and not ok_ran.exists()
    assert _final(notok)["state"] == "COMPLETED" and notok_ran.exists()
