"""The real trainer over several ranks, launched from scripts `llmctl train launch` rendered:
torchrun (local), mpirun (MPI ranks) and srun (the local SLURM cluster). Each run's losses
and validation losses follow the single-process run's; checkpoints saved at dp=2 and tp=2 resume in one process
with the same loss continuation (DCP reshards them)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs, run_cli

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobsupport import VENV_BIN, slurm_up, wait_state  # noqa: E402
from trainkit import HOLDPOINT, TINY_MODEL, flip_bytes, make_project, make_run, prepare_data, records, run_train  # noqa: E402,E501

STEPS = 6
LOSS_TOL = 1e-4  # float32 sums in another order; the loss is ~6, so ~2e-5 relative

SITE = """name = "{name}"
scheduler = "{scheduler}"
default_partition = "debug"
gpu_request = "none"
launcher = "{launcher}"
requeue_grace_s = 60
python = "{python}"
{extra}
[partitions.debug]
nodes = 1
cpus_per_node = 2
memory_gb = 4
max_time = "00:30:00"

[env]
OMP_NUM_THREADS = "1"
TOKENIZERS_PARALLELISM = "false"
DS_ACCELERATOR = "cpu"
"""

PLAN = """[inputs]
model = "configs/models/tiny.json"
nodes = 1
gpus_per_node = 2
seq_len = 32
global_batch = 8

[parallelism]
{layout}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("ptrain"), model={**TINY_MODEL, "tie_embeddings": False})
    prepare_data(root)
    ref = make_run(root, "single", steps=STEPS, interval=3, eval_interval=3)
    r = run_train(ref)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def losses(run: Path) -> dict[int, float]:
    return {t["step"]: t["loss"] for t in records(run, "train")}


def launch(root: Path, name: str, layout: str, scheduler: str, launcher: str, backend: str,
           extra: str = "", edit=None) -> Path:
    site = root / f"{name}-site.toml"
    site.write_text(SITE.format(name=name, scheduler=scheduler, launcher=launcher, python=sys.executable,
                                extra=extra))
    (root / f"{name}-plan.toml").write_text(PLAN.format(layout=layout))
    cfg = make_run(root, f"{name}-cfg", steps=STEPS, interval=3, eval_interval=3) / "config.toml"
    if edit is not None:
        cfg.write_text(edit(cfg.read_text()))
    run = root / "runs" / name
    r = run_cli("train", "launch", "--plan", f"{name}-plan.toml", "--config", str(cfg), "--launcher", backend,
                "--site", str(site), "--run-dir", str(run), "--name", f"llmctl-par-{name}", cwd=root,
                env={"LLMCTL_STATE_DIR": str(root / "state")})
    assert r.returncode == 0, r.stderr
    return run


def finish(root: Path, run: Path, timeout: float = 240) -> None:
    st = wait_state(lambda *a, **k: run_cli(*a, cwd=root, env={"LLMCTL_STATE_DIR": str(root / "state")}, **k),
                    run, timeout=timeout)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (run / "logs").glob("*"))
    assert st["state"] == "COMPLETED", (st, logs)


def assert_follows_single(root: Path, run: Path, ranks: int) -> None:
    ref, got = losses(root / "runs" / "single"), losses(run)
    assert sorted(got) == list(range(1, STEPS + 1)), got
    for step, loss in got.items():
        assert abs(loss - ref[step]) <= LOSS_TOL, f"step {step}: {loss} vs single-process {ref[step]}"
    start = records(run, "start")[0]
    assert start["world_size"] == ranks
    # Every layout logs its validation loss at the same steps as the single process, and the same value.
    ref_val, got_val = val_losses(root / "runs" / "single"), val_losses(run)
    assert sorted(got_val) == sorted(ref_val) == [3, 6], got_val
    for step, v in got_val.items():
        assert abs(v - ref_val[step]) <= LOSS_TOL, f"step {step}: val loss {v} vs single-process {ref_val[step]}"


def val_losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["val_loss"] for e in records(run, "eval")}


def resume_in_one_process(root: Path, src: Path, name: str) -> None:
    """Copy src's step-3 checkpoint into a fresh run folder and train steps 4-6 in one process."""
    run = make_run(root, name, steps=STEPS, interval=3, eval_interval=3)
    ck = run / "checkpoints"
    ck.mkdir()
    shutil.copytree(src / "checkpoints" / "step-00000003", ck / "step-00000003")
    assert (ck / "step-00000003" / "dcp" / ".metadata").is_file()
    (ck / "latest").write_text("step-00000003\n")
    r = run_train(run)
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = losses(root / "runs" / "single"), losses(run)
    assert records(run, "start")[0]["step"] == 3 and sorted(got) == [4, 5, 6]
    for step, loss in got.items():
        assert abs(loss - ref[step]) <= LOSS_TOL, f"resumed step {step}: {loss} vs {ref[step]}"


def test_torchrun_dp2_follows_single_process_and_resumes_at_dp1(project):
    run = launch(project, "ddp", "dp = 2\nmicro_batch = 4\ngrad_accum = 1", "local", "torchrun", "local")
    finish(project, run)
    assert_follows_single(project, run, 2)
    assert "torch.distributed.run" in (run / "job.sh").read_text()
    resume_in_one_process(project, run, "ddp-to-dp1")
    a_damaged_shard_is_refused(project, run, "ddp-flip")


def a_damaged_shard_is_refused(root: Path, src: Path, name: str) -> None:
    """state.json of a sharded checkpoint covers every rank's shard; one flipped byte in one of
    them and the resume (here in one process) refuses, naming that shard."""
    ck = src / "checkpoints" / "step-00000003"
    files = json.loads((ck / "state.json").read_text())["files"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "rng.pt"} <= set(files)
    run = make_run(root, name, steps=STEPS, interval=3, eval_interval=3)
    shutil.copytree(ck, run / "checkpoints" / ck.name)
    (run / "checkpoints" / "latest").write_text(ck.name + "\n")
    flip_bytes(run / "checkpoints" / ck.name / "dcp" / "__1_0.distcp", count=1)
    r = run_train(run)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "step-00000003/dcp/__1_0.distcp: contents differ from the sha256" in r.stderr
    assert not records(run, "train")


def _diverging(text: str, extra: str = "") -> str:
    """lr 1e30 without warm-up: step 1 blows the weights up, step 2's gradient norm is NaN."""
    text = text.replace("lr = 0.003", "lr = 1e30").replace("warmup_steps = 5", "warmup_steps = 0")
    return text.replace("interval_steps = 3", "interval_steps = 1").replace("[training]\n", "[training]\n" + extra)


def test_torchrun_dp2_skips_nonfinite_steps_together_then_stops(project):
    """Both ranks withhold the same updates, count them the same, and stop at the same step
    with one line (rank 0's), exit 2; no checkpoint of a non-finite step, `latest` stays."""
    run = launch(project, "nan", "dp = 2\nmicro_batch = 4\ngrad_accum = 1", "local", "torchrun", "local",
                 edit=lambda t: _diverging(t, 'nonfinite = "skip"\nmax_skipped_steps = 2\n'))
    st = wait_state(lambda *a, **k: run_cli(*a, cwd=project, env={"LLMCTL_STATE_DIR": str(project / "state")},
                                            **k), run, timeout=240)
    logs = "\n".join(p.read_text(errors="replace") for p in (run / "logs").glob("*"))
    assert st["state"] == "FAILED", (st, logs[-3000:])
    # torchrun reports a child's non-zero exit with its own traceback; none comes from llmctl.
    assert not [line for line in logs.splitlines() if line.startswith("  File") and "/llmctl/" in line], logs
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: step 4: "), logs[-3000:]
    assert "max_skipped_steps = 2" in errors[0] and "step-00000003" in errors[0]
    assert [t["step"] for t in records(run, "train") if t.get("skipped")] == [2, 3, 4]
    end = records(run, "end")[-1]
    assert end["reason"] == "nonfinite" and end["step"] == 4
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step-00000002", "step-00000003"]  # keep_last 2
    assert json.loads((ck / "step-00000003" / "state.json").read_text())["skipped_steps"] == 2


def test_torchrun_zero1_follows_single_process_with_val_loss(project):
    run = launch(project, "zero1", "dp = 2\nzero_stage = 1\nmicro_batch = 4\ngrad_accum = 1", "local",
                 "torchrun", "local")
    finish(project, run)
    assert_follows_single(project, run, 2)
    assert records(run, "start")[0]["layout"]["mode"] == "zero"


def test_mpirun_tp2_follows_single_process_and_resumes_at_dp1(project):
    needs("mpi", (VENV_BIN / "mpiexec").exists(), "pip install mpi4py mpich")
    run = launch(project, "tp", "tp = 2\nmicro_batch = 4\ngrad_accum = 2", "mpi", "mpirun", "mpi",
                 extra=f'mpirun = "{VENV_BIN}/mpiexec"')
    finish(project, run)
    assert_follows_single(project, run, 2)
    start = records(run, "start")[0]
    assert start["launcher"] in ("pmi", "openmpi", "torchrun")
    assert start["layout"]["sequence_parallel"] is True  # the default with tp > 1, recorded
    resume_in_one_process(project, run, "tp-to-dp1")


@pytest.mark.slurm
def test_srun_pp2_follows_single_process(project):
    needs("slurm", slurm_up(), "no running SLURM cluster (bash scripts/slurm-local.sh up)")
    # The single process's micro-batch (4): the validation set is eval_batches micro-batches.
    run = launch(project, "pp", "pp = 2\nmicro_batch = 4\ngrad_accum = 2", "slurm", "srun", "slurm")
    finish(project, run)
    assert_follows_single(project, run, 2)
    assert "srun --ntasks=2" in (run / "job.sh").read_text()


REQUEUE = {"zero3": "dp = 2\nzero_stage = 3\nmicro_batch = 4\ngrad_accum = 1",
           "pp2": "pp = 2\nmicro_batch = 2\ngrad_accum = 4"}


@pytest.mark.slurm
@pytest.mark.parametrize("name", list(REQUEUE))
def test_preempt_requeue_resume_on_slurm(project, name):
    """USR1 as SLURM sends it before preemption: every rank checkpoints (DeepSpeed's format for
    ZeRO-3, DCP for pp=2), the job requeues itself and resumes at the step it stopped.
    (One job at a time: the rendered script's MASTER_PORT is fixed, so two jobs on one node
    would collide.)"""
    import time

    needs("slurm", slurm_up(), "no running SLURM cluster (bash scripts/slurm-local.sh up)")
    steps = 60
    env = {"LLMCTL_STATE_DIR": str(project / "state")}
    site = project / f"{name}-rq-site.toml"
    # Rank 0 holds after step 5 until the signal comes (tests/holdpoint), so the preemption
    # lands mid-run however fast the machine is.
    site.write_text(SITE.format(name=f"{name}rq", scheduler="slurm", launcher="srun", python=sys.executable,
                                extra="") + f'PYTHONPATH = "{HOLDPOINT}"\nLLMCTL_TEST_HOLD_AT_STEP = "5"\n')
    (project / f"{name}-rq-plan.toml").write_text(PLAN.format(layout=REQUEUE[name]))
    cfg = make_run(project, f"{name}-rq-cfg", steps=steps, interval=1000, eval_interval=1000) / "config.toml"
    run = project / "runs" / f"{name}-rq"
    r = run_cli("train", "launch", "--plan", f"{name}-rq-plan.toml", "--config", str(cfg), "--launcher",
                "slurm", "--site", str(site), "--run-dir", str(run), "--name", f"llmctl-rq-{name}",
                cwd=project, env=env)
    assert r.returncode == 0, r.stderr
    job = json.loads((run / "submission.json").read_text())["job_id"]
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if any("llmctl-test: held after step 5" in p.read_text(errors="replace")
                   for p in (run / "logs").glob("*")):
                break
            time.sleep(0.2)
        else:
            logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (run / "logs").glob("*"))
            pytest.fail(f"the job never reached step 5: {logs}")
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
        finish(project, run, timeout=240)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    starts, ends = records(run, "start"), records(run, "end")
    assert len(starts) == 2 and ends[0]["reason"] == "preempted"
    k = ends[0]["step"]
    # held after step 5; the ranks agree on the stop at the end of that step or the next
    assert k in (5, 6) and starts[1]["step"] == k and starts[1]["restart"] >= 1
    assert ends[-1]["reason"] == "finished" and ends[-1]["step"] == steps
    assert [t["step"] for t in records(run, "train")] == list(range(1, steps + 1))  # none repeated or lost
    # every layout, ZeRO-3 included, checkpoints as DCP (llmctl.parallel.checkpoint)
    assert (run / "checkpoints" / f"step-{k:08d}" / "dcp").is_dir()
