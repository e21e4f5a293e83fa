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
from trainkit import make_project, prepare_data, records  # noqa: E402

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

TRAIN = """[model]
name = "llama-test"
config_file = "configs/models/tiny.json"

[parallel]
micro_batch_size = 4
global_batch_size = 8

[data]
config_file = "configs/data/tiny.toml"
seq_len = 32

[schedule]
warmup_steps = 5

[checkpoint]
interval_steps = 1000
keep_last = 2

[training]
max_steps = 200
eval_interval = 200
eval_batches = 2
log_interval = 1
"""

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
    site.write_text(SITE.format(python=sys.executable))
    (root / "plan.toml").write_text(PLAN)
    run = root / "runs" / "usr1"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", "configs/train.toml", "--launcher", "slurm", "--site", str(site),
                "--run-dir", str(run), "--name", "llmctl-usr1-test", cwd=root)
    assert r.returncode == 0, r.stderr
    job = json.loads((run / "submission.json").read_text())["job_id"]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            t = records(run, "train")
            if t and t[-1]["step"] >= 10:
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
    assert ends[0]["reason"] == "preempted" and 10 <= k < 200
    assert starts[1]["step"] == k and starts[1]["restart"] >= 1  # SLURM_RESTART_COUNT
    assert ends[-1] == {**ends[-1], "reason": "finished", "step": 200}
    steps = [t["step"] for t in records(run, "train")]
    assert steps == list(range(1, 201))  # continuing, no step lost or repeated
    assert "requeued SLURM job" in logs
