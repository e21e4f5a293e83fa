"""The torch thread policy shared by serve and train (llmctl/hw/threads.py): the config's
value, OMP_NUM_THREADS, SLURM_CPUS_PER_TASK shared by the ranks of one task, the affinity
mask shared by the ranks of the node, the cgroup quota (v2 and v1, the tightest up the tree)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmctl.hw.threads import cgroup_cpus, choose, default_threads, ranks_per_node


def test_omp_num_threads_wins_over_what_slurm_and_the_mask_say():
    env = {"OMP_NUM_THREADS": "2", "SLURM_CPUS_PER_TASK": "4", "LOCAL_WORLD_SIZE": "8"}
    assert default_threads(env, affinity=64, quota=None) == (2, "OMP_NUM_THREADS")


def test_slurm_cpus_per_task_is_shared_by_torchruns_workers_in_the_task():
    # srun launches each rank as its own task: the task's CPUs are the rank's
    assert default_threads({"SLURM_CPUS_PER_TASK": "4", "SLURM_NTASKS_PER_NODE": "2"}, affinity=64,
                           quota=None)[0] == 4
    # one srun task per node running torchrun with 4 workers: the task's 16 CPUs / 4
    n, why = default_threads({"SLURM_CPUS_PER_TASK": "16", "SLURM_NTASKS_PER_NODE": "1",
                              "LOCAL_WORLD_SIZE": "4"}, affinity=64, quota=None)
    assert n == 4 and "4 ranks in the task" in why
    assert default_threads({"SLURM_CPUS_PER_TASK": "2", "LOCAL_WORLD_SIZE": "8"}, affinity=64,
                           quota=None)[0] == 1  # never 0


@pytest.mark.parametrize("var,value,ranks", [
    ("LOCAL_WORLD_SIZE", "4", 4), ("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 2), ("MPI_LOCALNRANKS", "16", 16),
    ("SLURM_NTASKS_PER_NODE", "2(x3)", 2), ("SLURM_NTASKS_PER_NODE", "garbage", 1), ("LOCAL_WORLD_SIZE", "0", 1),
])
def test_ranks_per_node_from_each_launcher(var, value, ranks):
    assert ranks_per_node({var: value})[0] == ranks
    assert default_threads({var: value}, affinity=16, quota=None)[0] == max(1, 16 // ranks)


def test_the_affinity_mask_of_the_process_is_read():
    """A child pinned to one CPU (as taskset or a launcher's binding would) gets 1 thread."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from llmctl.hw.threads import default_threads; print(default_threads({}, quota=None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, '1 CPUs in the affinity mask')"


def write_v2(tmp_path, tree: dict[str, str], where: str = "/job/step"):
    root = tmp_path / "cg"
    for rel, text in tree.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "cpu.max").write_text(text)
    (root / where.strip("/")).mkdir(parents=True, exist_ok=True)
    self_cg = tmp_path / "self-cgroup"
    self_cg.write_text(f"0::{where}\n")
    return root, self_cg


def test_cgroup_v2_quota_is_the_tightest_up_the_tree(tmp_path):
    root, self_cg = write_v2(tmp_path, {"job": "250000 100000\n", "job/step": "max 100000\n"})
    assert cgroup_cpus(root, self_cg) == 2.5  # the job's limit, above the step's own cgroup
    root, self_cg = write_v2(tmp_path / "b", {"": "400000 100000", "job": "max 100000",
                                              "job/step": "150000 100000"})
    assert cgroup_cpus(root, self_cg) == 1.5
    root, self_cg = write_v2(tmp_path / "c", {"job/step": "max 100000"})
    assert cgroup_cpus(root, self_cg) is None
    assert cgroup_cpus(tmp_path / "absent", tmp_path / "absent-self") is None


def test_cgroup_v1_cfs_quota(tmp_path):
    cpu = tmp_path / "cg" / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("300000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (cpu.parent / "cpu.cfs_quota_us").write_text("-1\n")
    (cpu.parent / "cpu.cfs_period_us").write_text("100000\n")
    self_cg = tmp_path / "self"
    self_cg.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpus(tmp_path / "cg", self_cg) == 3.0
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus(tmp_path / "cg", self_cg) is None


def test_the_quota_caps_the_share_of_each_rank():
    assert default_threads({}, affinity=64, quota=3.0)[0] == 3
    assert default_threads({}, affinity=64, quota=2.5)[0] == 3  # CPU time, rounded up
    n, why = default_threads({"LOCAL_WORLD_SIZE": "4"}, affinity=64, quota=8.0)
    assert n == 2 and "cgroup CPU quota (8 CPUs / 4 ranks)" in why
    assert default_threads({}, affinity=2, quota=8.0) == (2, "2 CPUs in the affinity mask")


def test_the_config_overrides_everything():
    env = {"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "4"}
    assert choose(6, "the training config's training.threads", env, affinity=2, quota=1.0) == \
        (6, "the training config's training.threads")
    assert choose(None, "x", env, affinity=2, quota=1.0) == (1, "OMP_NUM_THREADS")


def test_apply_sets_torchs_threads():
    torch = pytest.importorskip("torch")
    from llmctl.hw.threads import apply

    before = torch.get_num_threads()
    try:
        assert apply(1, "the serve config's threads") == (1, "the serve config's threads")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_training_config_takes_threads_and_refuses_zero():
    from pydantic import ValidationError

    from llmctl.config.train import Training

    assert Training(threads=3).threads == 3 and Training().threads is None
    with pytest.raises(ValidationError):
        Training(threads=0)
