"""Finding a submitted job again, by run folder or job id, and asking its backend.

`llmctl job status|logs|cancel|list` go through here: the run folder's
`submission.json` says which backend and job id; a bare job id is looked up in
the index of submitted jobs (see `llmctl.schedulers.base.index_file`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from llmctl.errors import LlmctlError
from llmctl.jobs.rundir import RunDir


def find(ref: str) -> tuple[RunDir, Any, str]:
    """(RunDir, JobSpec, job id) for a run folder path or a job id."""
    from llmctl.schedulers.base import read_index

    p = Path(ref)
    if not p.is_dir():
        hits = [e for e in read_index() if e.get("job_id") == ref]
        if not hits:
            raise LlmctlError(f"{ref}: neither a run folder nor a job id llmctl submitted",
                              hint="`llmctl job list` shows the jobs llmctl knows about")
        p = Path(hits[-1]["run_dir"])
    run = RunDir(p).require()
    spec = run.load_spec()
    sub = run.submission()
    if not sub.get("job_id"):
        raise LlmctlError(f"{run.path}: not submitted yet", hint=f"llmctl job submit {run.path}")
    return run, spec, str(sub["job_id"])


def status(ref: str) -> dict[str, Any]:
    from llmctl.schedulers import get_scheduler

    run, spec, job_id = find(ref)
    st = get_scheduler(spec.backend).status(run, job_id)
    out = {"run_dir": str(run.path), "name": spec.name, "backend": spec.backend, **st.to_data()}
    if spec.kind == "train":
        from llmctl.train.progress import summarize  # reads metrics JSONL only: no torch

        out["progress"] = summarize(run.path)
    return out


def log_files(ref: str) -> list[Path]:
    from llmctl.schedulers import get_scheduler

    run, spec, job_id = find(ref)
    return get_scheduler(spec.backend).log_files(run, job_id)


def follow(ref: str, poll_s: float = 1.0) -> Iterator[str]:
    """Yield log text as it grows, until the job is done."""
    from llmctl.schedulers import get_scheduler

    run, spec, job_id = find(ref)
    sched = get_scheduler(spec.backend)
    offsets: dict[Path, int] = {}
    while True:
        done = sched.status(run, job_id).done
        for f in sched.log_files(run, job_id):
            with f.open("r", encoding="utf-8", errors="replace") as fh:
                fh.seek(offsets.get(f, 0))
                chunk = fh.read()
                offsets[f] = fh.tell()
            if chunk:
                yield chunk
        if done:
            return
        time.sleep(poll_s)


# States in which a job still waits in the queue: a cancel that has not taken yet is
# asked again (e.g. a job that a program requeued in the same instant).
_QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "SUSPENDED", "UNKNOWN")
CANCEL_WAIT_S = 120.0


def cancel(ref: str, wait_s: float = CANCEL_WAIT_S, poll_s: float = 1.0) -> dict[str, Any]:
    """End a job in whatever state it is (pending, held, running, requeued) and wait until
    its scheduler reports that it has ended.

    The result is the job's status plus `cancel`: "cancelled" (the scheduler says
    CANCELLED), "already ended" (nothing to cancel), "ended" (it ended otherwise before
    the cancel took effect) or "unconfirmed" (not ended after `wait_s` seconds: the
    state is what the scheduler said last).
    """
    from llmctl.schedulers import get_scheduler

    run, spec, job_id = find(ref)
    sched = get_scheduler(spec.backend)
    st = sched.status(run, job_id)
    base = {"run_dir": str(run.path), "name": spec.name, "backend": spec.backend}
    if st.done:
        return {**base, **st.to_data(), "cancel": "already ended", "waited_s": 0.0}
    t0 = time.monotonic()
    sched.cancel(run, job_id)
    asked = time.monotonic()
    while True:
        st = sched.status(run, job_id)
        now = time.monotonic()
        if st.done or now - t0 >= wait_s:
            break
        if st.state in _QUEUED and now - asked >= 5 * poll_s:
            sched.cancel(run, job_id)
            asked = now
        time.sleep(poll_s)
    outcome = "cancelled" if st.state == "CANCELLED" else "ended" if st.done else "unconfirmed"
    return {**base, **st.to_data(), "cancel": outcome, "waited_s": round(time.monotonic() - t0, 1)}


def list_jobs(all_users: bool = False) -> list[dict[str, Any]]:
    """The jobs in the index, newest last, with their run folder's current existence: the
    current user's (entries from before users were recorded count as theirs), or everyone's."""
    from llmctl.schedulers.base import current_user, read_index

    me = current_user()
    rows = []
    for e in read_index():
        user = e.get("user")
        if not all_users and user not in (None, me):
            continue
        rows.append({"job_id": e.get("job_id", "?"), "backend": e.get("backend", "?"),
                     "name": e.get("name", ""), "user": user or me, "submitted": e.get("submitted", ""),
                     "run_dir": e.get("run_dir", ""),
                     "present": Path(e.get("run_dir", "")).is_dir()})
    return rows
