"""MPI: mpirun over a hostfile, on machines without a batch system.

The script builds its hostfile from `$LLMCTL_HOSTS` (space-separated host names),
else runs on this host; it is started like a local job (its own process group, so
that cancel stops mpirun and every rank).
"""

from __future__ import annotations

from llmctl.schedulers.local import LocalScheduler


class MpiScheduler(LocalScheduler):
    name = "mpi"


SCHEDULER = MpiScheduler()
