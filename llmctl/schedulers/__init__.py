"""Schedulers: one module per backend behind one interface (see `base`).

Each backend renders a JobSpec to the exact script and submit command (a pure
dry run), then submits, tracks, shows logs of, cancels and lists jobs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmctl.schedulers.base import Scheduler

BACKENDS = ("local", "slurm", "pbs", "mpi", "k8s")


def get_scheduler(backend: str) -> "Scheduler":
    """The scheduler for `backend` (one of BACKENDS)."""
    from llmctl.errors import LlmctlError

    if backend not in BACKENDS:
        raise LlmctlError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    module = importlib.import_module(f"llmctl.schedulers.{backend}")
    return module.SCHEDULER
