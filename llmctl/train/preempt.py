"""Stopping on a signal: preemption (SIGUSR1) requeues, cancellation (SIGTERM) does not.

The one rule (docs/training.md, "Cancel and preemption"):

- SIGUSR1 is the preemption warning the job script asks for (SLURM:
  `--signal=B:USR1@<grace>`; the batch shell forwards it, torchrun passes it on to
  the ranks). The trainer finishes the step, checkpoints, and rank 0 requeues the
  SLURM job (`scontrol requeue`); exit code 75. It is the only thing that requeues.
- SIGTERM is what `scancel`, `qdel`, `kubectl delete` and a scheduler's kill send.
  The trainer finishes the step, checkpoints if the grace period allows, and exits
  with code 143 (128 + SIGTERM) without requeueing. A scheduler that preempts with
  SIGTERM and requeues the job itself (SLURM PreemptMode=REQUEUE, PBS `-r y`) still
  does so; the program just never asks for it.

The handler only records the signal; the loop looks at it after each optimizer
step, so a step is never cut in half and the checkpoint is consistent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on purpose, try again
EXIT_CANCELLED = 128 + signal.SIGTERM  # 143: stopped by SIGTERM (after checkpointing)

# What a stop request is; ranks agree on the largest (an all-reduce MAX), so a
# preemption seen by one rank is a preemption for all.
NONE, CANCEL, PREEMPT = 0, 1, 2


class Preemption:
    """Remembers which of SIGUSR1 (preempt) and SIGTERM (cancel) arrived."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None  # the first one
        self.received: set[int] = set()

    def install(self) -> "Preemption":
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum in self.received:
            return
        self.received.add(signum)
        if self.signal is None:
            self.signal = signum
        if signum == signal.SIGUSR1:
            what = "preemption warning: finishing this step, checkpointing, then requeueing"
        else:
            what = "cancelled: finishing this step, checkpointing, then exiting without requeueing"
        print(f"llmctl.train: {signal.Signals(signum).name} received ({what})", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def level(self) -> int:
        """NONE, CANCEL (SIGTERM only) or PREEMPT (SIGUSR1 arrived)."""
        if signal.SIGUSR1 in self.received:
            return PREEMPT
        return CANCEL if self.received else NONE


def reason(level: int) -> str:
    """The `end` record's reason for a stop of this level."""
    return "preempted" if level == PREEMPT else "cancelled"


def finish(level: int, rank0: bool = True) -> int:
    """After the checkpoint: requeue on a preemption (rank 0, under SLURM); the exit code."""
    if level == PREEMPT:
        if rank0 and _job_cancelled():
            # SIGUSR1, then the job was cancelled while it checkpointed: stay cancelled.
            print("llmctl.train: the job was cancelled during the preemption: not requeueing",
                  file=sys.stderr, flush=True)
            return EXIT_CANCELLED
        if rank0:
            requeue_slurm_job()
        return EXIT_PREEMPTED
    if rank0:
        print("llmctl.train: stopped by SIGTERM after checkpointing; not requeued", file=sys.stderr,
              flush=True)
    return EXIT_CANCELLED


def _slurm_job_id() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _job_cancelled() -> bool:
    """Does SLURM say this job was cancelled? (False off SLURM or when unsure.)

    While the job's processes finish, scontrol and squeue say COMPLETING whatever
    ended it; sacct already says 'CANCELLED by UID'.
    """
    job_id = _slurm_job_id()
    if not job_id:
        return False
    try:
        r = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    lines = r.stdout.split("\n") if r.returncode == 0 else []
    states = [ln.split()[0] for ln in lines if ln.strip()]
    return bool(states) and states[-1] == "CANCELLED"


def requeue_slurm_job() -> bool:
    """Requeue this SLURM job (rank 0 only); False when not under SLURM or it failed.

    slurmctld refuses it for a job `llmctl job cancel` has made non-requeueable.
    """
    job_id = _slurm_job_id()
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
