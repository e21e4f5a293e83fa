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
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.schedulers.base import JobStatus, Scheduler

# Runs the script, then records its status; `$1` script, `$2` exit-code file.
_WRAPPER = 'bash "$1"; echo $? >"$2.tmp" && mv "$2.tmp" "$2"'


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


class LocalScheduler(Scheduler):
    name = "local"

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
        if run.cancelled_file.exists():
            return JobStatus(job_id, "CANCELLED")
        if run.exit_code_file.exists():
            code = run.exit_code_file.read_text().strip()
            return JobStatus(job_id, "COMPLETED" if code == "0" else "FAILED", exit_code=code)
        if _alive(int(job_id), run.script(self.name)):
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
            deadline = time.monotonic() + 10
            while _alive(pid, run.script(self.name)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid, run.script(self.name)):
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


SCHEDULER = LocalScheduler()
