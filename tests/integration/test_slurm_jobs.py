"""Jobs on the real local SLURM cluster (bash scripts/slurm-local.sh up).

Rendered with `llmctl train launch --dry-run`, submitted with `llmctl job submit`
(through submitit), followed with `llmctl job status|logs|cancel`. The program is
the stand-in trainer (tests/integration/standin_train.py).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import needs, run_cli
from jobsupport import slurm_up, wait_for_text, wait_state, write_plan, write_site

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture
def cli(tmp_path):
    needs("slurm", slurm_up(), "start it with `bash scripts/slurm-local.sh up`")
    state = tmp_path / "state"

    def call(*args, **kw):
        return run_cli(*args, cwd=tmp_path, env={"LLMCTL_STATE_DIR": str(state), **kw.pop("env", {})}, **kw)
    return call


def launch(cli, tmp_path, name, *extra, site=None, plan=None):
    site = site or write_site(tmp_path, env={"STANDIN_STEPS": "3"})
    plan = plan or write_plan(tmp_path)
    run = tmp_path / "runs" / name
    r = cli("train", "launch", "--plan", str(plan), "--launcher", "slurm", "--site", str(site),
            "--name", name, "--run-dir", str(run), "--dry-run", *extra)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (run / "job.sh").read_text()  # what was printed is what is on disk
    return run


def submit(cli, run):
    r = cli("job", "submit", str(run))
    assert r.returncode == 0, r.stderr
    return json.loads((run / "submission.json").read_text())["job_id"]


def test_train_job_completes_and_status_and_logs_show_it(cli, tmp_path):
    run = launch(cli, tmp_path, "done")
    job_id = submit(cli, run)
    # submitit submitted the rendered script byte for byte
    assert (run / "logs" / f"{job_id}_submission.sh").read_bytes() == (run / "job.sh").read_bytes()
    st = wait_state(cli, run)
    assert st["state"] == "COMPLETED" and st["job_id"] == job_id
    logs = cli("job", "logs", str(run))
    assert logs.returncode == 0
    assert "standin: done 3 steps" in logs.stdout
    listed = cli("job", "list", "--json")
    assert job_id in [j["job_id"] for j in json.loads(listed.stdout)]
    by_id = cli("job", "status", job_id, "--json")
    assert json.loads(by_id.stdout)["state"] == "COMPLETED"


def test_submit_twice_is_refused(cli, tmp_path):
    run = launch(cli, tmp_path, "twice")
    submit(cli, run)
    again = cli("job", "submit", str(run))
    assert again.returncode == 2 and "already submitted" in again.stderr


def sacct_runs(job_id: str) -> list[str]:
    """The state of every run of the job (sacct -D: one line per run), oldest first."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", "State"],
                         capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def cancel(cli, run) -> dict:
    r = cli("job", "cancel", str(run), "--json", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(r.stdout)
    assert st["state"] == "CANCELLED", st
    return st


def assert_stays_cancelled(jobs: dict, seconds: float = 30.0) -> None:
    """Each job (id -> run folder) is CANCELLED in sacct and starts no program again for `seconds`."""
    starts = {j: _starts(run) for j, run in jobs.items()}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for job_id, run in jobs.items():
            runs = sacct_runs(job_id)
            assert runs and runs[-1] == "CANCELLED", (job_id, runs)
            assert squeue_state(job_id) == "", (job_id, squeue_state(job_id))
            assert _starts(run) == starts[job_id], f"job {job_id} ran again"
        time.sleep(2)


def _starts(run) -> int:
    return sum(p.read_text(errors="replace").count("standin: start at") for p in (run / "logs").glob("*_log.out"))


def test_cancel_reports_cancelled_promptly(cli, tmp_path):
    site = write_site(tmp_path, env={"STANDIN_STEPS": "1000", "STANDIN_STEP_S": "1"})
    run = launch(cli, tmp_path, "cancelme", site=site)
    job_id = submit(cli, run)
    wait_for_text(lambda: (run / "logs").glob("*_log.out"), "standin: ready")
    r = cli("job", "cancel", str(run), timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{job_id} CANCELLED"
    assert wait_state(cli, run, timeout=30)["state"] == "CANCELLED"
    assert_stays_cancelled({job_id: run})


def test_cancel_pending_and_held_jobs(cli, tmp_path):
    site = write_site(tmp_path, env={"STANDIN_STEPS": "1000", "STANDIN_STEP_S": "1"})
    blocker = launch(cli, tmp_path, "blocker", site=site)
    blocker_id = submit(cli, blocker)
    try:
        waiting = launch(cli, tmp_path, "waiting", "--after", blocker_id, site=site)
        waiting_id = submit(cli, waiting)
        held = launch(cli, tmp_path, "held", "--after", f"afterany:{blocker_id}", site=site)
        held_id = submit(cli, held)
        subprocess.run(["scontrol", "hold", held_id], check=True, timeout=30)
        assert squeue_state(waiting_id) == "PENDING" and squeue_state(held_id) == "PENDING"
        for run in (waiting, held):
            cancel(cli, run)
        # The blocker ending would release them if they were still there.
        cancel(cli, blocker)
        assert_stays_cancelled({waiting_id: waiting, held_id: held, blocker_id: blocker})
        assert _starts(waiting) == 0 and _starts(held) == 0
    finally:
        subprocess.run(["scancel", blocker_id], capture_output=True, timeout=30)


def test_cancel_a_job_that_was_requeued_once(cli, tmp_path):
    site = write_site(tmp_path, env={"STANDIN_STEPS": "1000", "STANDIN_STEP_S": "0.5"})
    run = launch(cli, tmp_path, "requeued", site=site)
    job_id = submit(cli, run)
    logs = lambda: (run / "logs").glob("*_log.out")  # noqa: E731
    wait_for_text(logs, "standin: ready")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=30)
    wait_for_text(logs, "restart 1", timeout=120)
    st = json.loads(cli("job", "status", str(run), "--json").stdout)
    assert st["restarts"] == 1 and st["last_state"] == "REQUEUED", st
    st = cancel(cli, run)
    assert st["restarts"] == 1
    assert_stays_cancelled({job_id: run})
    assert sacct_runs(job_id) == ["REQUEUED", "CANCELLED"]


def test_cancel_of_a_finished_job_says_how_it_ended(cli, tmp_path):
    run = launch(cli, tmp_path, "finished")
    job_id = submit(cli, run)
    assert wait_state(cli, run)["state"] == "COMPLETED"
    r = cli("job", "cancel", str(run))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{job_id} COMPLETED (already ended; nothing to cancel)"


def test_failed_job_shows_its_exit_code(cli, tmp_path):
    fail = tmp_path / "exit127"
    fail.write_text("#!/bin/bash\nexit 127\n")
    fail.chmod(0o755)
    site = write_site(tmp_path, name="fail127")
    site.write_text(site.read_text().replace(f'python = "{tmp_path}/standin-python"', f'python = "{fail}"'))
    run = launch(cli, tmp_path, "fail127", site=site)
    job_id = submit(cli, run)
    st = wait_state(cli, run)
    assert (st["state"], st["exit_code"]) == ("FAILED", 127), st
    line = cli("job", "status", str(run)).stdout
    assert line.startswith(f"{job_id} FAILED restarts=0 exit=127 "), line


def test_script_sbatch_refuses_prints_its_error_once(cli, tmp_path):
    site = write_site(tmp_path, name="nosuchpart")
    site.write_text(site.read_text().replace('"debug"', '"nosuch"').replace("partitions.debug", "partitions.nosuch"))
    run = launch(cli, tmp_path, "refused", site=site)
    r = cli("job", "submit", str(run))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("invalid partition specified: nosuch") == 1, r.stderr
    assert r.stderr.count("Invalid partition name specified") == 1, r.stderr
    assert not (run / "submission.json").exists()


def test_preempted_job_requeues_and_continues(cli, tmp_path):
    site = write_site(tmp_path, env={"STANDIN_STEPS": "20", "STANDIN_STEP_S": "0.5"})
    run = launch(cli, tmp_path, "preempt", site=site)
    job_id = submit(cli, run)
    logs = lambda: (run / "logs").glob("*_log.out")  # noqa: E731
    wait_for_text(logs, "standin: ready")
    time.sleep(1.5)
    # What SLURM does at --signal=B:USR1@grace: signal the batch shell only.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    st = wait_state(cli, run, timeout=120)
    assert st["state"] == "COMPLETED"
    out = cli("job", "logs", str(run)).stdout
    assert "USR1 received" in out
    assert "restart 1" in out
    ckpt_line = [x for x in out.splitlines() if "checkpointed at step" in x][0]
    step = int(ckpt_line.split("checkpointed at step ")[1].split(";")[0])
    assert 0 < step < 20
    assert f"standin: start at step {step}, restart 1" in out  # the second run continued
    assert st["restarts"] >= 1


def test_array_then_afterok_dependency_in_order(cli, tmp_path):
    order = tmp_path / "order.log"
    site = write_site(tmp_path, env={"STANDIN_STEPS": "4", "STANDIN_STEP_S": "0.5",
                                     "STANDIN_ORDER_FILE": str(order)})
    configs = []
    for i in range(3):
        c = tmp_path / f"c{i}.toml"
        c.write_text(f'[model]\nname = "tiny"\nconfig_file = "models/tiny.json"\n\n[training]\nseed = {i}\n')
        configs += ["--config", str(c)]
    arr = launch(cli, tmp_path, "arr", *configs, site=site)
    assert "#SBATCH --array=0-2" in (arr / "job.sh").read_text()
    assert [p.name for p in sorted((arr / "configs").iterdir())] == ["0.toml", "1.toml", "2.toml"]
    arr_id = submit(cli, arr)
    child = launch(cli, tmp_path, "child", "--after", arr_id, site=site)
    assert f"#SBATCH --dependency=afterok:{arr_id}" in (child / "job.sh").read_text()
    submit(cli, child)
    assert wait_state(cli, child, timeout=120)["state"] == "COMPLETED"
    events = [line.split() for line in order.read_text().splitlines()]
    ends = {e[1]: float(e[2]) for e in events if e[0] == "end"}
    starts = {e[1]: float(e[2]) for e in events if e[0] == "start"}
    assert sorted(k for k in ends if k.startswith("arr")) == ["arr0", "arr1", "arr2"]
    assert starts["child"] >= max(ends[k] for k in ("arr0", "arr1", "arr2"))
