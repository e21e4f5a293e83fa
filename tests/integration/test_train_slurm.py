"""On the local SLURM cluster: a training job gets USR1, checkpoints, requeues itself,
resumes from its checkpoint and reaches COMPLETED with the step count continuing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs, run_cli

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobsupport import slurm_up, wait_state  # noqa: E402
from trainkit import HOLDPOINT, make_project, prepare_data, records, train_toml  # noqa: E402

SITE = """name = "trainslurm"
scheduler = "slurm"
default_partition = "debug"
gpu_request = "none"
launcher = "srun"
requeue_grace_s = 60
python = "{python}"

[partitions.debug]
nodes = 1
cpus_per_node = 1
memory_gb = 2
max_time = "00:30:00"

[env]
OMP_NUM_THREADS = "1"
TOKENIZERS_PARALLELISM = "false"
"""

TRAIN = train_toml(steps=200, warmup=5, lr=None, seed=None, schedule=None)

# One CPU rank; micro-batch 4 x 2 accumulation steps = the global batch of 8.
PLAN = """[inputs]
model = "configs/models/tiny.json"
nodes = 1
gpus_per_node = 1
seq_len = 32
global_batch = 8

[parallelism]
dp = 1
micro_batch = 4
grad_accum = 2
"""


@pytest.mark.slurm
def test_usr1_requeues_and_the_job_completes_where_it_left_off(tmp_path):
    needs("slurm", slurm_up(), "no running SLURM cluster (bash scripts/slurm-local.sh up)")
    root = make_project(tmp_path / "proj")
    prepare_data(root)
    (root / "configs" / "train.toml").write_text(TRAIN)
    site = tmp_path / "trainslurm.toml"
    # The trainer holds after step 10 until the signal comes (tests/holdpoint): the
    # preemption lands mid-run however fast the machine is.
    site.write_text(SITE.format(python=sys.executable)
                    + f'PYTHONPATH = "{HOLDPOINT}"\nLLMCTL_TEST_HOLD_AT_STEP = "10"\n')
    (root / "plan.toml").write_text(PLAN)
    run = root / "runs" / "usr1"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", "configs/train.toml", "--launcher", "slurm", "--site", str(site),
                "--run-dir", str(run), "--name", "llmctl-usr1-test", cwd=root)
    assert r.returncode == 0, r.stderr
    job = json.loads((run / "submission.json").read_text())["job_id"]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any("llmctl-test: held after step 10" in p.read_text(errors="replace")
                   for p in (run / "logs").glob("*")):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the job never reached step 10: {list(run.glob('logs/*'))}")
        # The preemption warning, as SLURM sends it (--signal=B:USR1@...): to the batch shell,
        # which forwards it to the trainer.
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
        st = wait_state(run_cli, run, timeout=240)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    logs = "\n".join(p.read_text(errors="replace") for p in (run / "logs").glob("*"))
    assert st["state"] == "COMPLETED", (st, logs[-3000:])
    starts, ends = records(run, "start"), records(run, "end")
    assert len(starts) == 2, logs[-3000:]
    k = ends[0]["step"]
    assert ends[0]["reason"] == "preempted" and k == 10  # where it was held
    assert starts[1]["step"] == k and starts[1]["restart"] >= 1  # SLURM_RESTART_COUNT
    assert ends[-1] == {**ends[-1], "reason": "finished", "step": 200}
    steps = [t["step"] for t in records(run, "train")]
    assert steps == list(range(1, 201))  # continuing, no step lost or repeated
    assert "requeued SLURM job" in logs


def _sacct_runs(job: str) -> list[str]:
    """Every run of the job (one line per run with -D): its state, oldest first."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "State"],
                         capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _wait_step(run: Path, step: int, after_starts: int = 1, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = records(run, "train")
        if len(records(run, "start")) >= after_starts and t and t[-1]["step"] >= step:
            return
        time.sleep(0.2)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (run / "logs").glob("*"))
    pytest.fail(f"the job never reached step {step} (run {after_starts}): {logs}")


def _cancel_and_watch(run: Path, job: str, runs_before: list[str]) -> None:
    """`llmctl job cancel` confirms CANCELLED; for 30 s sacct says so and the job never restarts."""
    c = run_cli("job", "cancel", str(run), "--json", timeout=180)
    assert c.returncode == 0, c.stdout + c.stderr
    assert json.loads(c.stdout)["state"] == "CANCELLED"
    starts = len(records(run, "start"))
    # A requeued job restarts here in about 7 s; watch for longer.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert _sacct_runs(job) == [*runs_before, "CANCELLED"], _sacct_runs(job)
        assert len(records(run, "start")) == starts
        time.sleep(2)


@pytest.mark.slurm
def test_job_cancel_stops_a_running_training_job_for_good(tmp_path):
    """`llmctl job cancel` (scancel's SIGTERM) checkpoints and ends the job: no requeue.
    (It used to requeue: the trainer took SIGTERM for a preemption.)"""
    needs("slurm", slurm_up(), "no running SLURM cluster (bash scripts/slurm-local.sh up)")
    root = make_project(tmp_path / "proj")
    prepare_data(root)
    (root / "configs" / "train.toml").write_text(TRAIN.replace("max_steps = 200", "max_steps = 100000"))
    site = tmp_path / "trainslurm.toml"
    site.write_text(SITE.format(python=sys.executable))
    (root / "plan.toml").write_text(PLAN)
    run = root / "runs" / "cancel"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", "configs/train.toml", "--launcher", "slurm",
                "--site", str(site), "--run-dir", str(run), "--name", "llmctl-cancel-test", cwd=root)
    assert r.returncode == 0, r.stderr
    job = json.loads((run / "submission.json").read_text())["job_id"]
    try:
        _wait_step(run, 5)
        _cancel_and_watch(run, job, [])
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    logs = "\n".join(p.read_text(errors="replace") for p in (run / "logs").glob("*"))
    assert len(records(run, "start")) == 1, logs[-3000:]
    assert "requeued SLURM job" not in logs
    assert "program exited with status 143" in logs  # stopped by SIGTERM, after checkpointing
    end = records(run, "end")[-1]
    assert end["reason"] == "cancelled", logs[-3000:]
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{end['step']:08d}"


TORCHRUN_SITE = SITE.replace('launcher = "srun"', 'launcher = "torchrun"').replace(
    "cpus_per_node = 1", "cpus_per_node = 2")
TORCHRUN_PLAN = PLAN.replace("gpus_per_node = 1", "gpus_per_node = 2").replace(
    "dp = 1\nmicro_batch = 4\ngrad_accum = 2", "dp = 2\nmicro_batch = 4\ngrad_accum = 1")


@pytest.mark.slurm
def test_torchrun_ranks_tell_preemption_from_cancel(tmp_path):
    """Under torchrun (srun -> torchrun -> 2 ranks) each signal reaches the ranks as itself:
    USR1 (as --signal=B:USR1 sends it) checkpoints and requeues; after the resume,
    `job cancel` checkpoints and ends the job without a requeue."""
    needs("slurm", slurm_up(), "no running SLURM cluster (bash scripts/slurm-local.sh up)")
    root = make_project(tmp_path / "proj")
    prepare_data(root)
    (root / "configs" / "train.toml").write_text(TRAIN.replace("max_steps = 200", "max_steps = 100000"))
    site = tmp_path / "torchrunslurm.toml"
    site.write_text(TORCHRUN_SITE.format(python=sys.executable).replace('"trainslurm"', '"torchrunslurm"'))
    (root / "plan.toml").write_text(TORCHRUN_PLAN)
    run = root / "runs" / "torchrun"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", "configs/train.toml", "--launcher", "slurm",
                "--site", str(site), "--run-dir", str(run), "--name", "llmctl-torchrun-test", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "torch.distributed.run" in (run / "job.sh").read_text()
    job = json.loads((run / "submission.json").read_text())["job_id"]
    try:
        _wait_step(run, 3)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
        deadline = time.monotonic() + 60
        while not records(run, "end") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert records(run, "end")[0]["reason"] == "preempted"
        _wait_step(run, records(run, "end")[0]["step"] + 2, after_starts=2)  # resumed and training
        _cancel_and_watch(run, job, ["REQUEUED"])
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    starts, ends = records(run, "start"), records(run, "end")
    assert len(starts) == 2 and starts[1]["step"] == ends[0]["step"]
    assert [e["reason"] for e in ends] == ["preempted", "cancelled"]
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{ends[-1]['step']:08d}"
