"""`llmctl job status|cancel|submit` read the scheduler's own words: the exit code
from sacct/scontrol (SLURM) and qstat (PBS) for finished jobs, the state of the
previous run of a requeued job, and sbatch's error printed once.

The scheduler commands are stand-ins on PATH that print recorded output: the
SLURM lines were recorded on the local cluster (scripts/slurm-local.sh, SLURM
22.05); NODE_FAIL cannot be caused there without failing the node under other
people's jobs, so those lines follow the same format by hand. The PBS output is
written after the PBS Pro and Torque manuals' `qstat -f` examples.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli

SITE = """name = "fake"
scheduler = "{scheduler}"
default_partition = "debug"
gpu_request = "none"
launcher = "srun"
python = "/shared/envs/llmctl/bin/python"
{extra}
[partitions.debug]
nodes = 1
cpus_per_node = 2
memory_gb = 2
max_time = "00:30:00"
"""

PLAN = '[inputs]\nmodel = "m.json"\nnodes = 1\ngpus_per_node = 1\nglobal_batch = 1\n\n[parallelism]\ndp = 1\n'

# Recorded: `scontrol show job -o 4` (shortened) and `sacct -n -P -X -D -j 4 -o JobID,State,ExitCode`
# for a job whose program did not exist (exit 127).
SCONTROL_127 = ("JobId=4 JobName=f127 UserId=root(0) GroupId=root(0) Priority=4294901756 Nice=0 Account=root "
                "QOS=normal JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 "
                "BatchFlag=1 Reboot=0 ExitCode=127:0 RunTime=00:00:00 TimeLimit=00:30:00 "
                "Command=/tmp/jr/runs/f127/logs/.submission_file_5.sh WorkDir=/tmp/jr Power= \n")
SACCT_127 = "4|FAILED|127:0\n"
INVALID_ID = "slurm_load_jobs error: Invalid job id specified\n"


def fake_tools(tmp_path: Path, **tools: tuple[str, int]) -> dict:
    """Stand-ins on PATH: name=(stdout, exit code); on failure the text goes to stderr."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, (text, rc) in tools.items():
        out = bin_dir / f"{name}.out"
        out.write_text(text)
        stream = ">&2" if rc else ""
        log = bin_dir / "calls.log"
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >>"{log}"\ncat "{out}" {stream}\nexit {rc}\n')
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def calls(tmp_path: Path) -> list[str]:
    p = tmp_path / "fakebin" / "calls.log"
    return p.read_text().splitlines() if p.exists() else []


def run_folder(tmp_path: Path, scheduler: str = "slurm", job_id: str = "4", extra: str = "") -> Path:
    site = tmp_path / "fake.toml"
    site.write_text(SITE.format(scheduler=scheduler, extra=extra))
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    run = tmp_path / "run"
    r = run_cli("train", "launch", "--plan", str(plan), "--launcher", scheduler, "--site", str(site),
                "--run-dir", str(run), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run / "submission.json").write_text(json.dumps({"backend": scheduler, "job_id": job_id}))
    return run


def status(tmp_path, run, env, *extra):
    return run_cli("job", "status", str(run), *extra, cwd=tmp_path,
                   env={**env, "LLMCTL_STATE_DIR": str(tmp_path / "state")})


def test_slurm_exit_code_of_a_failed_job_is_shown(tmp_path):
    run = run_folder(tmp_path)
    env = fake_tools(tmp_path, scontrol=(SCONTROL_127, 0), sacct=(SACCT_127, 0), squeue=("", 0))
    r = status(tmp_path, run, env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:4] == ["4", "FAILED", "restarts=0", "exit=127"], r.stdout
    st = json.loads(status(tmp_path, run, env, "--json").stdout)
    assert st["state"] == "FAILED" and st["exit_code"] == 127 and st["exit_signal"] is None


def test_slurm_exit_code_from_sacct_once_scontrol_forgot_the_job(tmp_path):
    run = run_folder(tmp_path)
    env = fake_tools(tmp_path, scontrol=(INVALID_ID, 1), sacct=("4|COMPLETED|0:0\n", 0), squeue=("", 0))
    st = json.loads(status(tmp_path, run, env, "--json").stdout)
    assert st["state"] == "COMPLETED" and st["exit_code"] == 0


def test_slurm_killed_by_a_signal_names_it(tmp_path):
    run = run_folder(tmp_path)
    env = fake_tools(tmp_path, scontrol=(INVALID_ID, 1), sacct=("4|FAILED|0:9\n", 0), squeue=("", 0))
    st = json.loads(status(tmp_path, run, env, "--json").stdout)
    assert (st["exit_code"], st["exit_signal"]) == (0, 9)
    assert "exit=0 signal=9" in status(tmp_path, run, env).stdout


def test_slurm_running_job_has_no_exit_code_yet(tmp_path):
    run = run_folder(tmp_path)
    live = SCONTROL_127.replace("JobState=FAILED Reason=NonZeroExitCode", "JobState=RUNNING Reason=None")
    live = live.replace("ExitCode=127:0", "ExitCode=0:0")
    env = fake_tools(tmp_path, scontrol=(live, 0), sacct=("4|RUNNING|0:0\n", 0), squeue=("RUNNING\n", 0))
    st = json.loads(status(tmp_path, run, env, "--json").stdout)
    assert st["state"] == "RUNNING" and st["exit_code"] is None


@pytest.mark.parametrize("before", ["NODE_FAIL", "PREEMPTED", "TIMEOUT", "REQUEUED"])
def test_slurm_restart_names_what_ended_the_previous_run(tmp_path, before):
    run = run_folder(tmp_path)
    live = SCONTROL_127.replace("JobState=FAILED Reason=NonZeroExitCode", "JobState=RUNNING Reason=None")
    live = live.replace("Restarts=0", "Restarts=1").replace("ExitCode=127:0", "ExitCode=0:0")
    # sacct -D: one line per run, oldest first.
    env = fake_tools(tmp_path, scontrol=(live, 0), sacct=(f"4|{before}|0:0\n4|RUNNING|0:0\n", 0),
                     squeue=("RUNNING\n", 0))
    r = status(tmp_path, run, env)
    assert r.returncode == 0, r.stderr
    assert f"4 RUNNING restarts=1 (last: {before})" in r.stdout
    st = json.loads(status(tmp_path, run, env, "--json").stdout)
    assert st["restarts"] == 1 and st["last_state"] == before


def test_slurm_pending_after_a_node_failure_says_so(tmp_path):
    run = run_folder(tmp_path)
    live = SCONTROL_127.replace("JobState=FAILED Reason=NonZeroExitCode", "JobState=PENDING Reason=BeginTime")
    live = live.replace("Restarts=0", "Restarts=1").replace("ExitCode=127:0", "ExitCode=0:0")
    env = fake_tools(tmp_path, scontrol=(live, 0), sacct=("4|NODE_FAIL|0:0\n", 0), squeue=("PENDING\n", 0))
    assert "4 PENDING restarts=1 (last: NODE_FAIL)" in status(tmp_path, run, env).stdout


def test_sbatch_error_is_printed_once(tmp_path):
    run = run_folder(tmp_path)
    (run / "submission.json").unlink()
    err = ("sbatch: error: invalid partition specified: nosuch\n"
           "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    env = fake_tools(tmp_path, sbatch=(err, 1))
    r = run_cli("job", "submit", str(run), cwd=tmp_path, env={**env, "LLMCTL_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("invalid partition specified: nosuch") == 1, r.stderr
    assert r.stderr.count("Invalid partition name specified") == 1, r.stderr
    assert r.stdout == ""
    assert not (run / "submission.json").exists()


QSTAT_PBSPRO_FINISHED = """Job Id: 1234.pbs01
    Job_Name = train
    Job_Owner = alice@login01
    job_state = F
    queue = workq
    Exit_status = {code}
    run_count = {runs}
    Rerunable = True
"""

QSTAT_TORQUE_COMPLETED = """Job Id: 1234.torque01
    Job_Name = train
    job_state = C
    queue = batch
    exit_status = {code}
    start_count = 1
"""


@pytest.mark.parametrize("code,state,exit_code,signal", [
    (0, "COMPLETED", 0, None), (127, "FAILED", 127, None), (265, "FAILED", None, 9)])
def test_pbspro_exit_status_of_a_finished_job(tmp_path, code, state, exit_code, signal):
    run = run_folder(tmp_path, "pbs", "1234.pbs01")
    env = fake_tools(tmp_path, qstat=(QSTAT_PBSPRO_FINISHED.format(code=code, runs=1), 0))
    st = json.loads(status(tmp_path, run, env, "--json").stdout)
    assert (st["state"], st["exit_code"], st["exit_signal"]) == (state, exit_code, signal)
    # A finished PBS Pro job is only shown with -x (its history).
    assert calls(tmp_path)[-1] == "qstat -x -f 1234.pbs01"


def test_pbspro_rerun_job_counts_its_restarts(tmp_path):
    run = run_folder(tmp_path, "pbs", "1234.pbs01")
    out = QSTAT_PBSPRO_FINISHED.format(code=0, runs=2).replace("job_state = F", "job_state = R")
    out = out.replace("    Exit_status = 0\n", "")
    env = fake_tools(tmp_path, qstat=(out, 0))
    st = json.loads(status(tmp_path, run, env, "--json").stdout)
    assert (st["state"], st["restarts"], st["exit_code"]) == ("RUNNING", 1, None)


def test_torque_exit_status_of_a_completed_job(tmp_path):
    run = run_folder(tmp_path, "pbs", "1234.torque01", extra='pbs_dialect = "torque"')
    env = fake_tools(tmp_path, qstat=(QSTAT_TORQUE_COMPLETED.format(code=127), 0))
    r = status(tmp_path, run, env)
    assert "1234.torque01 FAILED restarts=0 exit=127" in r.stdout, r.stdout + r.stderr
    assert calls(tmp_path)[-1] == "qstat -f 1234.torque01"  # Torque's -x means XML


def test_slurm_restart_before_accounting_closed_the_lost_run_says_nothing_false(tmp_path):
    """Requeued (scontrol says Restarts=1) while slurmdbd still lists the lost run as RUNNING:
    how that run ended is not known yet, so no "(last: RUNNING)"."""
    run = run_folder(tmp_path)
    live = SCONTROL_127.replace("JobState=FAILED Reason=NonZeroExitCode", "JobState=PENDING Reason=BeginTime")
    live = live.replace("Restarts=0", "Restarts=1").replace("ExitCode=127:0", "ExitCode=0:0")
    env = fake_tools(tmp_path, scontrol=(live, 0), sacct=("4|RUNNING|0:0\n", 0), squeue=("PENDING\n", 0))
    st = json.loads(status(tmp_path, run, env, "--json").stdout)
    assert st["restarts"] == 1 and st["last_state"] is None, st
    assert "(last:" not in status(tmp_path, run, env).stdout
