"""Preemption: SIGUSR1 (SLURM's warning before the kill) or SIGTERM -> finish the step, checkpoint, exit.

The handler only sets a flag; the loop looks at it after each optimizer step, so a
step is never cut in half and the checkpoint is consistent. Under SLURM the job is
then requeued (`scontrol requeue $SLURM_JOB_ID`) and the next start resumes from
the checkpoint's `latest` pointer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on purpose, try again


class Preemption:
    """Remembers the first SIGUSR1/SIGTERM that arrives."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> "Preemption":
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum
            print(f"llmctl.train: {signal.Signals(signum).name} received: finishing this step, "
                  "then checkpointing", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signal is not None


def requeue_slurm_job() -> bool:
    """Requeue this SLURM job (rank 0 only); False when not under SLURM or it failed."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job
              else os.environ.get("SLURM_JOB_ID"))
    if not job_id or int(os.environ.get("RANK", "0")) != 0:
        return False
    try:
        r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"llmctl.train: scontrol requeue {job_id} failed: {e}", file=sys.stderr, flush=True)
        return False
    if r.returncode != 0:
        print(f"llmctl.train: scontrol requeue {job_id} failed: {r.stderr.strip()}", file=sys.stderr,
              flush=True)
        return False
    print(f"llmctl.train: requeued SLURM job {job_id}", file=sys.stderr, flush=True)
    return True
