"""More than one node, for real: jobs on partition `multi` of the local cluster
(scripts/slurm-multinode.sh: node1 and node2 are slurmds in their own network and UTS
namespaces, so each has its own hostname and address, and gloo talks over a bridge).

`train launch --launcher slurm --nodes 2` with 2 ranks per node, from a test copy of
site-configs/local-multinode.toml: DDP under srun (a task per rank) and under torchrun
with c10d rendezvous (a task per node), FSDP2 (dp=2 x tp=2, its shards on both nodes),
and tp=2 x pp=2 with the two pipeline stages on different nodes, each following the single-process losses (tolerance of
test_parallel_train); every rank names its host. A node lost mid-job (its link taken
down) ends the job NODE_FAIL, SLURM requeues it, and the rerun resumes from the last
checkpoint to the weights of an uninterrupted run.

Skipped where the partition is absent; LLMCTL_REQUIRE_SLURM=1 makes that a failure.
Each test is one or two 4-rank jobs on a 2-core machine: marked `multinode` and `slow`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, needs, run_cli

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobsupport import wait_state  # noqa: E402
from trainkit import HOLDPOINT, TINY_MODEL, make_project, make_run, prepare_data, records, run_train  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.slow]

PARTITION = "multi"
STEPS = 6
LOSS_TOL = 1e-4  # as test_parallel_train: float32 sums in another order
HOSTS_2X2 = ["node1", "node1", "node2", "node2"]  # srun's block distribution: ranks 0,1 on the first node

# 2 nodes x 2 ranks. Micro-batch 2 everywhere: the validation set is eval_batches micro-batches.
PLAN = """[inputs]
model = "configs/models/tiny.json"
nodes = 2
gpus_per_node = 2
seq_len = 32
global_batch = 8

[parallelism]
{layout}
"""


def multinode_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-N", "-o", "%N %T"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    ok = {ln.split()[0] for ln in out.stdout.splitlines()
          if len(ln.split()) == 2 and ln.split()[1].startswith(("idle", "mixed", "alloc"))}
    return out.returncode == 0 and {"node1", "node2"} <= ok


def require_multinode() -> None:
    needs("slurm", multinode_up(),
          f"no partition {PARTITION!r} with node1 and node2 up (bash scripts/slurm-multinode.sh up)")


def site_copy(root: Path, name: str, env: dict | None = None) -> Path:
    """site-configs/local-multinode.toml with this interpreter on the nodes (the shipped file
    names /srv/llmctl/venv) and one CPU per rank, so that a 2-rank node has room to spare."""
    text = (REPO / "site-configs" / "local-multinode.toml").read_text()
    text = re.sub(r'(?m)^name = .*$', f'name = "{name}"', text)
    text = re.sub(r'(?m)^python = .*$', f'python = "{sys.executable}"', text)
    text = re.sub(r'(?m)^cpus_per_node = .*$', "cpus_per_node = 2", text)
    text = re.sub(r'(?m)^memory_gb = .*$', "memory_gb = 3", text)
    text = re.sub(r'(?m)^requeue_grace_s = .*$', "requeue_grace_s = 30", text)
    for k, v in (env or {}).items():
        text += f"{k} = {json.dumps(v)}\n"  # [env] is the file's last table
    p = root / f"{name}.toml"
    p.write_text(text)
    return p


def cli_env(root: Path) -> dict:
    return {"LLMCTL_STATE_DIR": str(root / "state")}


def launch(root: Path, name: str, layout: str, *args: str, env: dict | None = None, steps: int = STEPS,
           interval: int = 3) -> Path:
    site = site_copy(root, f"mn{name}", env)
    (root / f"{name}-plan.toml").write_text(PLAN.format(layout=layout))
    cfg = make_run(root, f"{name}-cfg", steps=steps, interval=interval, eval_interval=3) / "config.toml"
    run = root / "runs" / name
    r = run_cli("train", "launch", "--plan", f"{name}-plan.toml", "--config", str(cfg), "--launcher", "slurm",
                "--site", str(site), "--nodes", "2", "--run-dir", str(run), "--name", f"llmctl-mn-{name}",
                *args, cwd=root, env=cli_env(root))
    assert r.returncode == 0, r.stderr
    return run


def logs(run: Path) -> str:
    return "\n".join(f"== {p.name}\n" + p.read_text(errors="replace")[-3000:]
                     for p in sorted((run / "logs").glob("*")))


def finish(root: Path, run: Path, timeout: float = 300) -> dict:
    try:
        st = wait_state(lambda *a, **k: run_cli(*a, cwd=root, env=cli_env(root), **k), run, timeout=timeout)
    finally:
        job = json.loads((run / "submission.json").read_text())["job_id"]
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    assert st["state"] == "COMPLETED", (st, logs(run))
    return st


def losses(run: Path) -> dict[int, float]:
    return {t["step"]: t["loss"] for t in records(run, "train")}


def assert_follows_single(root: Path, run: Path) -> None:
    ref, got = losses(root / "runs" / "single"), losses(run)
    assert sorted(got) == list(range(1, STEPS + 1)), got
    for step, loss in got.items():
        assert abs(loss - ref[step]) <= LOSS_TOL, f"step {step}: {loss} vs single-process {ref[step]}"
    ref_val = {e["step"]: e["val_loss"] for e in records(root / "runs" / "single", "eval")}
    got_val = {e["step"]: e["val_loss"] for e in records(run, "eval")}
    assert sorted(got_val) == sorted(ref_val) == [3, 6], got_val
    for step, v in got_val.items():
        assert abs(v - ref_val[step]) <= LOSS_TOL, f"step {step}: val loss {v} vs {ref_val[step]}"


def assert_spans_both_nodes(run: Path, hosts: list[str] = HOSTS_2X2) -> None:
    start = records(run, "start")[0]
    assert start["world_size"] == 4 and start["hosts"] == hosts, start
    text = logs(run)
    for rank, host in enumerate(hosts):
        assert f"llmctl: rank {rank} of 4 (local rank {rank % 2}) on {host}" in text, text


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    require_multinode()
    root = make_project(tmp_path_factory.mktemp("multinode"), model={**TINY_MODEL, "tie_embeddings": False})
    prepare_data(root)
    ref = make_run(root, "single", steps=STEPS, interval=3, eval_interval=3)
    cfg = ref / "config.toml"
    cfg.write_text(cfg.read_text().replace("micro_batch_size = 4", "micro_batch_size = 2"))
    r = run_train(ref)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


DDP = "dp = 4\nmicro_batch = 2\ngrad_accum = 1"


@pytest.fixture(scope="module")
def ddp_run(project):
    """The uninterrupted 2-node DDP run (also the reference of the node-loss test)."""
    run = launch(project, "ddp", DDP)
    finish(project, run)
    return run


def test_srun_ddp_across_two_nodes_follows_single_process_and_resumes(project, ddp_run):
    run = ddp_run
    assert_follows_single(project, run)
    assert_spans_both_nodes(run)
    script = (run / "job.sh").read_text()
    assert "#SBATCH --nodes=2" in script and "srun --ntasks=4 --ntasks-per-node=2" in script
    # The step-3 checkpoint, shards written by ranks on node1 and node2, resumes in one process.
    ck = run / "checkpoints" / "step-00000003"
    files = json.loads((ck / "state.json").read_text())["files"]
    assert {f"dcp/__{r}_0.distcp" for r in range(4)} <= set(files)
    again = make_run(project, "ddp-resumed", steps=STEPS, interval=3, eval_interval=3)
    cfg = again / "config.toml"
    cfg.write_text(cfg.read_text().replace("micro_batch_size = 4", "micro_batch_size = 2"))
    shutil.copytree(ck, again / "checkpoints" / ck.name)
    (again / "checkpoints" / "latest").write_text(ck.name + "\n")
    r = run_train(again)
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = losses(project / "runs" / "single"), losses(again)
    assert records(again, "start")[0]["step"] == 3 and sorted(got) == [4, 5, 6]
    for step, loss in got.items():
        assert abs(loss - ref[step]) <= LOSS_TOL, f"resumed step {step}: {loss} vs {ref[step]}"


def test_torchrun_c10d_ddp_across_two_nodes_follows_single_process(project):
    run = launch(project, "torchrun", "dp = 4\nmicro_batch = 2\ngrad_accum = 1", "--set", "launcher=torchrun")
    finish(project, run)
    assert_follows_single(project, run)
    assert_spans_both_nodes(run)
    script = (run / "job.sh").read_text()
    assert "srun --ntasks=2 --ntasks-per-node=1" in script and "--rdzv-backend=c10d" in script
    assert records(run, "start")[0]["launcher"] == "torchrun"


DP2TP2 = "dp = 2\ntp = 2\nmicro_batch = 2\ngrad_accum = 2"


def test_fsdp2_shards_across_two_nodes_and_follows_single_process(project):
    """FSDP2 under srun, 2 nodes x 2 ranks: dp=2 x tp=2 (DDP cannot take tensor-parallel
    parameters, so the data-parallel dimension is FSDP2's fully_shard). The mesh is (pp, dp, tp):
    each tp pair on one node, so every FSDP2 group (ranks 0,2 and 1,3) spans node1 and node2,
    and each parameter's shards live on both nodes."""
    run = launch(project, "fsdp2", DP2TP2)
    finish(project, run)
    assert_follows_single(project, run)
    assert_spans_both_nodes(run)
    layout = records(run, "start")[0]["layout"]
    assert (layout["dp"], layout["tp"], layout["pp"], layout["mode"]) == (2, 2, 1, "fsdp"), layout
    assert "srun --ntasks=4 --ntasks-per-node=2" in (run / "job.sh").read_text()


TP2PP2 = "tp = 2\npp = 2\nmicro_batch = 2\ngrad_accum = 4"


@pytest.fixture(scope="module")
def tp2pp2_run(project):
    """The uninterrupted tp=2 x pp=2 run (also the reference of the node-loss test)."""
    run = launch(project, "tp2pp2", TP2PP2)
    finish(project, run)
    return run


def test_tp2_pp2_puts_the_pipeline_stages_on_different_nodes(project, tp2pp2_run):
    run = tp2pp2_run
    assert_follows_single(project, run)
    # The mesh is (pp, dp, tp): ranks 0,1 (stage 0, a tp pair) on node1, ranks 2,3 (stage 1) on node2.
    assert_spans_both_nodes(run)
    layout = records(run, "start")[0]["layout"]
    assert (layout["tp"], layout["pp"], layout["dp"]) == (2, 2, 1)


def weights(ck: Path) -> dict:
    from llmctl.parallel.checkpoint import Source

    return dict(Source(ck).model_tensors())


def ns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    return [int(x) for x in out.stdout.split()]


def test_node_lost_mid_job_is_requeued_and_resumes_to_the_uninterrupted_weights(project, tp2pp2_run):
    """node2's link goes down while rank 0 holds after step 4 (the step-3 checkpoint is
    written): SLURM marks node2 down, ends the run NODE_FAIL and requeues it (--requeue).
    node2 comes back as after a reboot (its job processes gone, slurmd up, link up); the
    rerun on both nodes resumes from step 3 and ends with the uninterrupted run's weights,
    bit for bit (same layout, same rank placement, RNG and data position restored). DDP's resume
    is bit-exact too: test_ddp_resumed_across_two_nodes_ends_with_the_uninterrupted_weights."""
    ns, slurmd_pid = "llm-n2", Path("/run/slurm/slurmd-node2.pid")
    needs("slurm", Path(f"/run/netns/{ns}").exists() and slurmd_pid.is_file(),
          "node2's namespace is not this script's (scripts/slurm-multinode.sh)")
    run = launch(project, "nodefail", TP2PP2, env={"PYTHONPATH": str(HOLDPOINT), "LLMCTL_TEST_HOLD_AT_STEP": "4",
                                                "LLMCTL_TEST_HOLD_RESTART": "0"})
    job = json.loads((run / "submission.json").read_text())["job_id"]
    status = lambda: json.loads(run_cli("job", "status", str(run), "--json", cwd=project,  # noqa: E731
                                        env=cli_env(project)).stdout)
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + 240
        while "llmctl-test: held after step 4" not in logs(run):
            assert time.monotonic() < deadline, logs(run)
            time.sleep(0.3)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], check=True, timeout=10)
        deadline = time.monotonic() + 180
        # NODE_FAIL after SlurmdTimeout (30 s) and a ping round; last_state stays None until
        # slurmdbd has closed the lost run (it lags the requeue on a busy machine)
        while (st := status())["restarts"] < 1 or st.get("last_state") is None:
            assert time.monotonic() < deadline, (st, logs(run))
            time.sleep(1)
        lost_after = time.monotonic() - t0
        # requeued: finishing the lost run's processes, waiting for node2, or running again
        assert st["last_state"] == "NODE_FAIL" and st["state"] in (
            "COMPLETING", "PENDING", "REQUEUED", "CONFIGURING", "RUNNING"), st
        text = run_cli("job", "status", str(run), cwd=project, env=cli_env(project)).stdout
        assert "restarts=1 (last: NODE_FAIL)" in text, text
        # node2 "reboots": what ran there is gone (slurmd stays), then the link comes back.
        keep = int(slurmd_pid.read_text())
        for pid in ns_pids(ns):
            if pid != keep:
                subprocess.run(["kill", "-9", str(pid)], capture_output=True, timeout=10)
    except BaseException:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
        raise
    finally:
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], capture_output=True, timeout=10)
    st = finish(project, run, timeout=300)
    assert st["restarts"] == 1 and st["last_state"] == "NODE_FAIL", st
    starts, ends = records(run, "start"), records(run, "end")
    assert len(starts) == 2 and starts[1]["step"] == 3 and starts[1]["restart"] == 1, starts
    assert starts[1]["hosts"] == HOSTS_2X2
    assert ends[-1]["reason"] == "finished" and ends[-1]["step"] == STEPS
    # steps 4.. ran twice (the first run's step 4 was lost with the node); the rerun's match
    ref = losses(tp2pp2_run)
    got = {t["step"]: t["loss"] for t in records(run, "train") if t["step"] > 3}
    assert got == {k: v for k, v in ref.items() if k > 3}, (got, ref)
    import torch

    a, b = weights(tp2pp2_run / "checkpoints" / "step-00000006"), weights(run / "checkpoints" / "step-00000006")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), {k: (a[k] - b[k]).abs().max().item() for k in a}
    print(f"node lost -> requeued in {lost_after:.0f} s; whole test {time.monotonic() - t0:.0f} s")


def test_ddp_resumed_across_two_nodes_ends_with_the_uninterrupted_weights(project, ddp_run):
    """DDP, 2 nodes x 2 ranks: a job started from the uninterrupted run's step-3 checkpoint (as a
    requeued job finds it) ends with its step-6 weights and optimizer state bit for bit. A ring
    all-reduce over 4 ranks sums each element in an order set by its offset in DDP's bucket, whose
    layout DDP changes after a process's first backward; llmctl settles it before the first step
    (llmctl.parallel.transformer.settle_buckets), so the resumed process's step 4 sums as the
    uninterrupted run's did."""
    run = launch(project, "ddp-rerun", DDP, "--dry-run")
    ck = ddp_run / "checkpoints" / "step-00000003"
    shutil.copytree(ck, run / "checkpoints" / ck.name)
    (run / "checkpoints" / "latest").write_text(ck.name + "\n")
    r = run_cli("job", "submit", str(run), cwd=project, env=cli_env(project))
    assert r.returncode == 0, r.stderr
    finish(project, run)
    start = records(run, "start")
    assert len(start) == 1 and start[0]["step"] == 3 and start[0]["hosts"] == HOSTS_2X2, start
    ref = losses(ddp_run)
    assert losses(run) == {k: v for k, v in ref.items() if k > 3}, (losses(run), ref)
    import torch

    from llmctl.parallel.checkpoint import Source

    a, b = (Source(d / "checkpoints" / "step-00000006") for d in (ddp_run, run))
    keys = [k for k, md in a._meta.items() if k.startswith(("model.", "optim.state.")) and hasattr(md, "size")]
    ta, tb = a.read(keys), b.read(keys)
    differ = {k: (ta[k].double() - tb[k].double()).abs().max().item()
              for k in keys if not torch.equal(ta[k], tb[k])}
    assert not differ, differ


@pytest.mark.mpi
def test_mpirun_across_two_nodes_follows_single_process(project):
    """The mpirun launcher: a host list from SLURM (the rendered hostfile, node1 node1 node2
    node2), MPICH's hydra from the venv starting the ranks on both nodes through SLURM."""
    from jobsupport import VENV_BIN

    needs("mpi", (VENV_BIN / "mpiexec").exists(), "pip install mpi4py mpich")
    run = launch(project, "mpirun", DDP, "--set", "launcher=mpirun", "--set", f"mpirun={VENV_BIN}/mpiexec")
    finish(project, run)
    assert_follows_single(project, run)
    assert_spans_both_nodes(run)
    assert "-machinefile \"$HOSTFILE\"" in (run / "job.sh").read_text()
    # the script's rank_env_mpi exports RANK/WORLD_SIZE from MPI's own variables
    assert records(run, "start")[0]["launcher"] in ("pmi", "torchrun")


def test_torchrun_elastic_restart_after_a_rank_crash_continues_without_requeue(project):
    """torchrun's own fault tolerance: the site's `max_restarts` (here `--set max_restarts=3`),
    rendered as --max-restarts, with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 exported on 2 nodes
    (a fresh store per attempt: with the shared rendezvous store the restarted workers find the
    last attempt's gloo addresses and fail to connect; docs/training.md). Rank 3 (node2) dies
    after step 4; both nodes' agents restart their workers, which resume from the step-3
    checkpoint in the same job: no requeue, SLURM never sees a failure."""
    run = launch(project, "elastic", DDP, "--set", "launcher=torchrun", "--set", "max_restarts=3",
                 env={"PYTHONPATH": str(HOLDPOINT), "LLMCTL_TEST_CRASH_AT_STEP": "4",
                      "LLMCTL_TEST_CRASH_RANK": "3"})
    script = (run / "job.sh").read_text()
    assert "--max-restarts=3" in script and "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in script
    st = finish(project, run)
    assert st["restarts"] == 0 and not st.get("last_state"), st
    text = logs(run)
    assert "llmctl-test: rank 3 crashing after step 4" in text, text
    starts = records(run, "start")
    assert len(starts) == 2 and starts[1]["step"] == 3 and starts[1]["restart"] == 0, starts
    assert starts[1]["hosts"] == HOSTS_2X2
    assert records(run, "end")[-1]["reason"] == "finished"
    # the resumed steps follow the single process as the uninterrupted ones do
    ref = losses(project / "runs" / "single")
    after = {t["step"]: t["loss"] for t in records(run, "train")[-3:]}
    assert sorted(after) == [4, 5, 6], after
    for step, loss in after.items():
        assert abs(loss - ref[step]) <= LOSS_TOL, f"step {step}: {loss} vs single-process {ref[step]}"
