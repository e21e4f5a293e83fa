"""Local: the script runs on this machine as a detached process group.

The job id is the process id of a small wrapper shell that leads its own
process group (so `cancel` stops every rank at once) and writes the script's exit
status into the run folder (so `status` knows it after llmctl has exited).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError
from llmctl.schedulers.base import JobStatus, Scheduler

# Runs the script, then records its status; `$1` script, `$2` exit-code file. It
# outlives the SIGTERM of `cancel` (a trap, not an ignore, which the script would
# inherit) so that it records how the program ended after checkpointing.
_WRAPPER = 'trap : TERM; bash "$1"; echo $? >"$2.tmp" && mv "$2.tmp" "$2"'
# Seconds between SIGTERM and SIGKILL on cancel (SLURM's default KillWait; Kubernetes'
# default terminationGracePeriodSeconds): the program's time to checkpoint.
CANCEL_GRACE_S = 30.0


def _alive(pid: int, script: Path) -> bool:
    """Is `pid` still our wrapper (not a zombie, not a recycled pid)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return str(script).encode() in cmdline


def _exit_code(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class LocalScheduler(Scheduler):
    name = "local"

    def context(self, spec: Any) -> dict[str, Any]:
        from llmctl.jobs.resolve import after_jobs

        # --after: (type, job id, its run folder), for the script's wait before the program.
        return {"after_jobs": [(kind, job_id, spec.after_run_dirs[job_id])
                               for kind, job_id in after_jobs(spec.after)]}

    def submit(self, run: Any, spec: Any) -> str:
        script = run.script(self.name)
        run.logs.mkdir(parents=True, exist_ok=True)
        with open(run.local_log, "ab") as log:
            try:
                proc = subprocess.Popen(
                    ["bash", "-c", _WRAPPER, "llmctl-job", str(script), str(run.exit_code_file)],
                    cwd=run.path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            except OSError as e:
                raise LlmctlError(f"cannot start {script}: {e.strerror or e}") from e
        return str(proc.pid)

    def status(self, run: Any, job_id: str) -> JobStatus:
        alive = _alive(int(job_id), run.script(self.name))
        code = _exit_code(run.exit_code_file)
        if run.cancelled_file.exists():
            # Cancelled, and still stopping (checkpointing) until the wrapper is gone.
            return JobStatus(job_id, "COMPLETING" if alive else "CANCELLED",
                             exit_code=None if alive else code)
        if code is not None:
            return JobStatus(job_id, "COMPLETED" if code == 0 else "FAILED", exit_code=code)
        if alive:
            return JobStatus(job_id, "RUNNING")
        return JobStatus(job_id, "FAILED", detail={"reason": "process gone without an exit status"})

    def log_files(self, run: Any, job_id: str) -> list[Path]:
        return [run.local_log] if run.local_log.is_file() else []

    def cancel(self, run: Any, job_id: str) -> None:
        pid = int(job_id)
        if not _alive(pid, run.script(self.name)):
            return
        run.cancelled_file.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + CANCEL_GRACE_S
            while _alive(pid, run.script(self.name)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid, run.script(self.name)):
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


SCHEDULER = LocalScheduler()
