"""How many intra-op threads torch gets: the CPUs this process may use, not the machine's.
One policy for `serve` (llmctl.serve.start, .batch) and `train` (llmctl.train.trainer).

torch defaults to one thread per core of the machine. On a shared login node or a
compute node split between jobs that oversubscribes the CPUs the job was given, and
a decode step or a training step, chains of small matmuls, then waits on descheduled
threads (decode on the tiny model fell from 143 to 2.8 tokens/s on a loaded node;
tests/bench/test_bench_thread_policy.py). The count, first match:

1. the config's `threads` (serve config `threads`, training config `training.threads`);
2. `OMP_NUM_THREADS`, when set (the user's or the launcher's explicit choice; torchrun
   sets it to 1 for each of several workers when it is unset);
3. `SLURM_CPUS_PER_TASK` (what SLURM allocated to this task), shared by the ranks that
   run inside one task (torchrun's workers: ranks per node / SLURM_NTASKS_PER_NODE);
4. the CPU affinity mask (`os.sched_getaffinity`: taskset, cpusets, a launcher's
   binding) shared by the ranks of this node, and capped by their share of the cgroup's
   CPU quota (cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`: a container's or a job's limit).

Ranks per node: `LOCAL_WORLD_SIZE` (torchrun), `OMPI_COMM_WORLD_LOCAL_SIZE` (Open MPI),
`MPI_LOCALNRANKS` (MPICH), `SLURM_NTASKS_PER_NODE` (srun), else 1.
Nothing here imports torch until `apply`: the login-node path may import this module.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional

LOCAL_RANK_VARS = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")
CGROUP = Path("/sys/fs/cgroup")


def _positive_int(value: Optional[str]) -> Optional[int]:
    try:
        n = int(str(value).split("(")[0])  # SLURM_NTASKS_PER_NODE may read "2(x3)"
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def _cpu_max(folder: Path) -> Optional[float]:
    """cgroup v2: `cpu.max` ("QUOTA PERIOD", QUOTA "max" when unlimited) as CPUs."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        cpus = int(quota) / int(period)  # "max" raises: unlimited
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return cpus if cpus > 0 else None


def _cfs_quota(folder: Path) -> Optional[float]:
    """cgroup v1: `cpu.cfs_quota_us` (-1 when unlimited) / `cpu.cfs_period_us` as CPUs."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _walk(base: Path, rel: str, read) -> list[float]:
    """The limits set on the cgroup `rel` under `base` and on each of its parents (a SLURM
    job's or a pod's limit may sit above the process's own cgroup)."""
    parts = [p for p in rel.split("/") if p and p != ".."]
    return [v for v in (read(base.joinpath(*parts[:i])) for i in range(len(parts), -1, -1)) if v is not None]


def cgroup_cpus(root: Path = CGROUP, self_cgroup: Path = Path("/proc/self/cgroup")) -> Optional[float]:
    """CPUs this process's cgroup quota allows, the tightest from its own cgroup up to the
    root (None: unlimited). `self_cgroup` says where the process sits: `0::/path` (v2,
    `/` inside a container's cgroup namespace) or `N:cpu,cpuacct:/path` (v1)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = ["0::/"]
    limits: list[float] = []
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        rel = path.strip()
        if hid == "0" and not controllers:
            limits += _walk(root, rel, _cpu_max)
        elif "cpu" in controllers.split(","):
            base = root / controllers if (root / controllers).is_dir() else root / "cpu"
            limits += _walk(base, rel, _cfs_quota)
    return min(limits) if limits else None


def ranks_per_node(env: Mapping[str, str]) -> tuple[int, str]:
    """(ranks on this node, the variable that said so) — 1 when no launcher says."""
    for var in LOCAL_RANK_VARS:
        n = _positive_int(env.get(var))
        if n:
            return n, var
    return 1, ""


def default_threads(env: Optional[Mapping[str, str]] = None, affinity: Optional[int] = None,
                    quota: Optional[float] = -1.0) -> tuple[int, str]:
    """(threads, where the number came from) for this process, without a config value.
    `affinity` (CPUs in the mask) and `quota` (CPUs of cgroup quota, None: unlimited) are
    read from the process when not given."""
    env = os.environ if env is None else env
    omp = _positive_int(env.get("OMP_NUM_THREADS"))
    if omp:
        return omp, "OMP_NUM_THREADS"
    ranks, ranks_var = ranks_per_node(env)
    per_task = _positive_int(env.get("SLURM_CPUS_PER_TASK"))
    if per_task:
        tasks = _positive_int(env.get("SLURM_NTASKS_PER_NODE")) or 1
        sharing = max(1, ranks // tasks)  # torchrun's workers inside one srun task
        if sharing == 1:
            return per_task, "SLURM_CPUS_PER_TASK"
        return max(1, per_task // sharing), f"SLURM_CPUS_PER_TASK={per_task} / {sharing} ranks in the task"
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, affinity // ranks)
    why = f"{affinity} CPUs in the affinity mask" + (f" / {ranks} ranks on this node ({ranks_var})"
                                                     if ranks > 1 else "")
    quota = cgroup_cpus() if quota == -1.0 else quota
    if quota is not None:
        cap = max(1, math.ceil(quota / ranks))  # 2.5 CPUs of quota: 3 threads, rounded up
        if cap < n:
            n, why = cap, f"the cgroup CPU quota ({quota:g} CPUs" + (f" / {ranks} ranks)" if ranks > 1 else ")")
    return n, why


def choose(threads: Optional[int], source: str, env: Optional[Mapping[str, str]] = None,
           affinity: Optional[int] = None, quota: Optional[float] = -1.0) -> tuple[int, str]:
    """The config's `threads` (named by `source`) when set, else `default_threads`."""
    if threads:
        return threads, source
    return default_threads(env, affinity, quota)


def apply(threads: Optional[int], source: str) -> tuple[int, str]:
    """Set torch's intra-op threads; returns (count, reason)."""
    import torch

    n, why = choose(threads, source)
    torch.set_num_threads(n)
    return n, why
