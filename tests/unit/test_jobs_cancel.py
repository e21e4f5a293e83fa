"""Cancel versus preempt: SIGUSR1 (the preemption warning) is the only thing that
requeues; SIGTERM (scancel, qdel, kubectl delete, `llmctl job cancel`) checkpoints
and stops with exit code 143. `job cancel` waits until the scheduler says
CANCELLED, and says so when it does not.

The SLURM tools here are stand-ins on PATH that log their calls; the real cluster
runs the same paths in tests/integration/test_slurm_jobs.py and test_train_slurm.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli

# A program with the trainer's contract: it installs the handler, signals itself
# (the signals named in argv, in order), then stops the way the trainer does.
PROGRAM = textwrap.dedent("""
    import os, signal, sys, time
    from llmctl.train.preempt import Preemption, finish, reason
    p = Preemption().install()
    for name in sys.argv[1:]:
        os.kill(os.getpid(), getattr(signal, name))
        time.sleep(0.05)
    print("reason", reason(p.level), flush=True)
    sys.exit(finish(p.level))
""")


def fake_slurm(tmp_path: Path, sacct_state: str = "RUNNING") -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name, out in (("scontrol", ""), ("sacct", f"{sacct_state}\n")):
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >>"{log}"\nprintf %s "{out}"\n')
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "RANK": "0",
            "PYTHONPATH": str(REPO)}


def stop(tmp_path, env, *signals):
    r = subprocess.run([sys.executable, "-c", PROGRAM, *signals], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=60)
    log = tmp_path / "calls.log"
    return r, log.read_text().splitlines() if log.exists() else []


def test_sigterm_stops_without_requeue(tmp_path):
    r, calls = stop(tmp_path, fake_slurm(tmp_path), "SIGTERM")
    assert r.returncode == 143, r.stderr
    assert "reason cancelled" in r.stdout
    assert not any("requeue" in c for c in calls), calls
    assert "SIGTERM received (cancelled" in r.stderr and "not requeued" in r.stderr


def test_sigusr1_requeues(tmp_path):
    r, calls = stop(tmp_path, fake_slurm(tmp_path), "SIGUSR1")
    assert r.returncode == 75, r.stderr
    assert "reason preempted" in r.stdout
    assert "scontrol requeue 42" in calls


def test_cancelled_during_a_preemption_stays_cancelled(tmp_path):
    # USR1, then scancel while it checkpoints: sacct already says CANCELLED.
    r, calls = stop(tmp_path, fake_slurm(tmp_path, "CANCELLED by 0"), "SIGUSR1", "SIGTERM")
    assert r.returncode == 143, r.stderr
    assert not any("requeue" in c for c in calls), calls


def test_time_limit_during_a_preemption_still_requeues(tmp_path):
    # USR1, then the time limit's SIGTERM before the checkpoint finished: not a cancel.
    r, calls = stop(tmp_path, fake_slurm(tmp_path, "TIMEOUT"), "SIGUSR1", "SIGTERM")
    assert r.returncode == 75, r.stderr
    assert "scontrol requeue 42" in calls


def test_ranks_agree_on_the_largest_request():
    from llmctl.train.preempt import CANCEL, NONE, PREEMPT, Preemption

    p = Preemption()
    assert p.level == NONE
    p._handle(signal.SIGTERM, None)
    assert p.level == CANCEL and p.requested
    p._handle(signal.SIGUSR1, None)
    assert p.level == PREEMPT
    assert NONE < CANCEL < PREEMPT  # the all-reduce takes the MAX


# --- local jobs --------------------------------------------------------------------

def _local(tmp_path, monkeypatch, program: str):
    from llmctl.jobs.launch import prepare, submit_run
    from llmctl.jobs.resolve import JobRequest

    monkeypatch.setenv("LLMCTL_STATE_DIR", str(tmp_path / "state"))
    req = JobRequest(kind="eval", backend="local", run_dir=str(tmp_path / "run"), name="t",
                     program=["-c", program], python=sys.executable, env={"PYTHONPATH": str(REPO)})
    run, _ = prepare(req, "local")
    submit_run(run.path)
    return run


def test_local_cancel_lets_the_program_checkpoint_and_records_its_exit(tmp_path, monkeypatch):
    from llmctl.jobs import track

    ready = tmp_path / "ready"
    # Like the trainer: on SIGTERM finish the "step" (0.5 s here), then stop with 143.
    program = textwrap.dedent(f"""
        import pathlib, sys, time
        from llmctl.train.preempt import Preemption, finish
        p = Preemption().install()
        pathlib.Path({str(ready)!r}).touch()
        while not p.requested:
            time.sleep(0.05)
        time.sleep(0.5)
        print("checkpointed", flush=True)
        sys.exit(finish(p.level))
    """)
    run = _local(tmp_path, monkeypatch, program)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    st = track.cancel(str(run.path), wait_s=30)
    assert (st["state"], st["cancel"], st["exit_code"]) == ("CANCELLED", "cancelled", 143), st
    log = (run.path / "logs" / "job.out").read_text()
    assert "TERM received: forwarding" in log and "checkpointed" in log
    assert "program exited with status 143" in log


def test_cancel_of_a_finished_local_job_changes_nothing(tmp_path, monkeypatch):
    from llmctl.jobs import track

    run = _local(tmp_path, monkeypatch, "print('done')")
    deadline = time.monotonic() + 30
    while track.status(str(run.path))["state"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    st = track.cancel(str(run.path))
    assert (st["state"], st["cancel"], st["exit_code"]) == ("COMPLETED", "already ended", 0)
    assert not (run.path / "cancelled").exists()


# --- the CLI's word ----------------------------------------------------------------

SITE = """name = "fake"
scheduler = "{scheduler}"
default_partition = "debug"
gpu_request = "none"
launcher = "srun"
{extra}
[partitions.debug]
nodes = 1
cpus_per_node = 2
memory_gb = 2
max_time = "00:30:00"
"""
PLAN = '[inputs]\nmodel = "m.json"\nnodes = 1\ngpus_per_node = 1\nglobal_batch = 1\n\n[parallelism]\ndp = 1\n'


def run_folder(tmp_path: Path, scheduler: str, job_id: str, extra: str = "") -> Path:
    site = tmp_path / "fake.toml"
    # The interpreter on the compute nodes: the site's to say (the container's with one).
    extra = extra or 'python = "python3"\n'
    site.write_text(SITE.format(scheduler=scheduler, extra=extra))
    (tmp_path / "plan.toml").write_text(PLAN)
    run = tmp_path / "run"
    r = run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--launcher", scheduler, "--site",
                str(site), "--run-dir", str(run), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run / "submission.json").write_text(json.dumps({"backend": scheduler, "job_id": job_id}))
    return run


def scripted(tmp_path: Path, name: str, body: str) -> dict:
    """A stand-in tool with a bash body; calls are logged to calls.log."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >>"{tmp_path}/calls.log"\n{body}\n')
    (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "LLMCTL_STATE_DIR": str(tmp_path / "state")}


def calls(tmp_path):
    return (tmp_path / "calls.log").read_text().splitlines()


RUNNING = "JobId=9 JobName=x JobState=RUNNING Reason=None Requeue=1 Restarts=0 ExitCode=0:0\n"


def test_slurm_cancel_makes_the_job_non_requeueable_then_scancels(tmp_path):
    run = run_folder(tmp_path, "slurm", "9")
    # scontrol says RUNNING until scancel has been called, then CANCELLED.
    flag = tmp_path / "scancelled"
    env = scripted(tmp_path, "scontrol", f'[ "$1" = show ] || exit 0\nif [ -e {flag} ]; then '
                   f'echo "{RUNNING.replace("RUNNING", "CANCELLED").strip()}"; else echo "{RUNNING.strip()}"; fi')
    scripted(tmp_path, "scancel", f"touch {flag}")
    scripted(tmp_path, "sacct", "echo '9|CANCELLED by 0|0:15'")
    r = run_cli("job", "cancel", str(run), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "9 CANCELLED\n"
    c = calls(tmp_path)
    assert c.index("scontrol update JobId=9 Requeue=0") < c.index("scancel 9")


def test_slurm_cancel_asks_again_while_the_job_is_still_queued(tmp_path):
    """A job a program requeued in the same instant is PENDING again: cancel it again."""
    run = run_folder(tmp_path, "slurm", "9")
    count = tmp_path / "count"
    pending = RUNNING.replace("RUNNING", "PENDING").strip()
    cancelled = RUNNING.replace("RUNNING", "CANCELLED").strip()
    env = scripted(tmp_path, "scontrol", f'[ "$1" = show ] || exit 0\n'
                   f'n=$(cat {count} 2>/dev/null || echo 0)\n'
                   f'if [ "$n" -ge 2 ]; then echo "{cancelled}"; else echo "{pending}"; fi')
    scripted(tmp_path, "scancel", f'n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) >{count}')
    scripted(tmp_path, "sacct", "true")
    r = run_cli("job", "cancel", str(run), "--json", cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "CANCELLED"
    assert calls(tmp_path).count("scancel 9") == 2


def test_unconfirmed_cancel_says_so_and_exits_1(tmp_path):
    run = run_folder(tmp_path, "slurm", "9")
    env = scripted(tmp_path, "scontrol", f'[ "$1" = show ] || exit 0\necho "{RUNNING.strip()}"')
    scripted(tmp_path, "scancel", "true")
    scripted(tmp_path, "sacct", "true")
    r = run_cli("job", "cancel", str(run), "--wait", "2", cwd=tmp_path, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "CANCELLED" not in r.stdout
    assert "cancel requested, but after 2 s the slurm scheduler still reports RUNNING" in r.stderr
    assert "Traceback" not in r.stderr


def test_pbs_cancel_reports_cancelled_once_qstat_shows_the_job_ended(tmp_path):
    run = run_folder(tmp_path, "pbs", "77.pbs01")
    flag = tmp_path / "deleted"
    env = scripted(tmp_path, "qstat", f'if [ -e {flag} ]; then printf "Job Id: 77.pbs01\\n    job_state = F\\n'
                   f'    Exit_status = 271\\n"; else printf "Job Id: 77.pbs01\\n    job_state = H\\n"; fi')
    scripted(tmp_path, "qdel", f"touch {flag}")
    r = run_cli("job", "cancel", str(run), "--json", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert (st["state"], st["exit_signal"]) == ("CANCELLED", 15)  # 271 = 256 + SIGTERM
    assert "qdel 77.pbs01" in calls(tmp_path)


def test_k8s_cancel_deletes_the_job_and_reports_cancelled_once_it_is_gone(tmp_path):
    run = run_folder(tmp_path, "k8s", "llm/train", extra='[container]\nruntime = "kubernetes"\nimage = "img:1"\npython = "python3"\n'
                     f'mounts = ["{tmp_path}:/workspace"]\n'
                     '[kubernetes]\nnamespace = "llm"\n')
    flag = tmp_path / "deleted"
    env = scripted(tmp_path, "kubectl", f'case "$1" in get) [ -e {flag} ] || echo "train|1|||";; '
                   f'delete) touch {flag};; esac')
    r = run_cli("job", "cancel", str(run), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "llm/train CANCELLED\n"
    assert any(c.startswith("kubectl delete job/train -n llm") and "--cascade=foreground" in c
               for c in calls(tmp_path)), calls(tmp_path)


@pytest.mark.parametrize("command", [["job", "status"], ["job", "cancel", "--wait", "0"]])
def test_job_status_and_cancel_import_no_heavy_modules(tmp_path, command):
    run = run_folder(tmp_path, "slurm", "9")
    env = scripted(tmp_path, "scontrol", f'[ "$1" = show ] || exit 0\necho "{RUNNING.strip()}"')
    scripted(tmp_path, "scancel", "true")
    scripted(tmp_path, "sacct", "true")
    probe = ("import json, sys; from llmctl.cli import main; rc = main(sys.argv[1:]); "
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torch', 'deepspeed', 'mpi4py', 'transformers', 'submitit'))))")
    r = subprocess.run([sys.executable, "-c", probe, *command, str(run)], capture_output=True, text=True,
                       env={**os.environ, **env}, cwd=tmp_path, timeout=60)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [], r.stdout + r.stderr
