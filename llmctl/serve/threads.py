"""How many intra-op threads torch gets: the CPUs this process may use, not the machine's.

torch defaults to one thread per core of the machine. On a shared login node or a
compute node split between jobs that oversubscribes the CPUs the job was given, and
a decode step, a chain of small matmuls, then waits on descheduled threads (decode on
the tiny model fell from 143 to 2.8 tokens/s on a loaded node). The count, first match:

1. the serve config's `threads`;
2. `OMP_NUM_THREADS`, when set (the user's or the launcher's explicit choice);
3. `SLURM_CPUS_PER_TASK` (what SLURM allocated to this task);
4. the CPU affinity mask (`os.sched_getaffinity`: taskset, cpusets, srun's binding),
   shared by the ranks of this node when a launcher says how many there are, and capped
   by the cgroup's CPU quota (`cpu.max`, a container's or a job's limit).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


def _positive_int(value: Optional[str]) -> Optional[int]:
    try:
        n = int(str(value).split("(")[0])  # SLURM_NTASKS_PER_NODE may read "2(x3)"
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> Optional[int]:
    """CPUs the cgroup v2 quota allows (`cpu.max` "QUOTA PERIOD"), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def default_threads(env=None, affinity: Optional[int] = None, quota: Optional[int] = -1) -> tuple[int, str]:
    """(threads, where the number came from) for this process."""
    env = os.environ if env is None else env
    for var in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        n = _positive_int(env.get(var))
        if n:
            return n, var
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks = next((r for r in (_positive_int(env.get(v)) for v in LOCAL_RANK_VARS) if r), 1)
    n, why = max(1, affinity // ranks), f"{affinity} CPUs in the affinity mask / {ranks} ranks on this node"
    quota = cgroup_cpus() if quota == -1 else quota
    if quota is not None and quota < n:
        n, why = quota, f"the cgroup CPU quota ({quota})"
    return n, why


def apply(threads: Optional[int]) -> tuple[int, str]:
    """Set torch's intra-op threads; returns (count, reason)."""
    import torch

    n, why = (threads, "the serve config's threads") if threads else default_threads()
    torch.set_num_threads(n)
    return n, why
