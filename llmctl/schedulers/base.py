"""The scheduler interface every backend implements, and what they share.

    render(spec)        -> DryRun: the exact script and the exact submit command
                           (pure: same spec, same bytes; touches nothing)
    submit(run)         -> job id: submits the script on disk, exactly as written
    status(run, id)     -> JobStatus
    log_files(run, id)  -> the files `llmctl job logs` prints
    cancel(run, id)     -> asks the scheduler to stop the job
    list_jobs()         -> every job llmctl submitted from this account (the index)

Scripts are rendered from `templates/jobs/<backend>/<kind>.sh.j2` (Kubernetes:
`.yaml.j2`). Scheduler directives are built here as sorted (flag, value) pairs and
each value passes through the template's `shq` filter.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# States a job does not leave (SLURM's names; other backends map onto them).
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED_FINAL")


def directive_value(value: Any) -> str:
    """A value for a one-line directive (#SBATCH/#PBS): control characters become spaces.

    A newline inside a directive would end the comment and turn the rest of the
    value into a shell line, so it may not survive even inside quotes.
    """
    return _CONTROL.sub(" ", str(value))


@dataclass(frozen=True)
class Directive:
    """One scheduler directive: `flag` alone, or `flag` and a value to quote."""

    flag: str
    value: Optional[str] = None
    sep: str = "="


@dataclass
class DryRun:
    """What `submit` would do: the script text and the command that submits it."""

    spec: Any
    script: str
    script_path: Path
    submit_argv: list[str]

    def materialize(self) -> str:
        return self.script

    @property
    def submit_command(self) -> str:
        return shlex.join(self.submit_argv)


@dataclass
class JobStatus:
    """A job's state as its scheduler reports it (SLURM's state names).

    `exit_code` and `exit_signal` are known once the job has ended (a job killed by
    signal 9 has exit_code 0 and exit_signal 9, as sacct's `0:9`). `restarts` counts
    requeues; `last_state` is how the run before the current one ended (NODE_FAIL,
    PREEMPTED, TIMEOUT, REQUEUED), None before any restart.
    """

    job_id: str
    state: str
    restarts: int = 0
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    last_state: Optional[str] = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state.split()[0] in FINAL_STATES

    def to_data(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "restarts": self.restarts,
                "last_state": self.last_state, "exit_code": self.exit_code,
                "exit_signal": self.exit_signal, **self.detail}


class Scheduler(ABC):
    """One backend. Subclasses set `name` and implement the abstract methods."""

    name: str = ""
    suffix: str = ".sh.j2"

    # --- render (pure) ----------------------------------------------------------
    def template(self, spec: Any) -> str:
        return f"jobs/{self.name}/{spec.kind}{self.suffix}"

    def directives(self, spec: Any) -> list[Directive]:
        """Scheduler directives, sorted by flag; none for backends without any."""
        return []

    def submit_argv(self, script: Path) -> list[str]:
        return ["bash", str(script)]

    def context(self, spec: Any) -> dict[str, Any]:
        """Extra template variables a backend computes (e.g. its directives)."""
        return {}

    def render(self, spec: Any) -> DryRun:
        from llmctl import __version__
        from llmctl.jobs.rundir import RunDir
        from llmctl.render import render

        script_path = RunDir(spec.run_dir).script(spec.backend)
        argv = self.submit_argv(script_path)
        directives = sorted(self.directives(spec), key=lambda d: (d.flag, d.value or ""))
        directives = [Directive(d.flag, None if d.value is None else directive_value(d.value), d.sep)
                      for d in directives]
        text = render(self.template(spec), spec=spec, version=__version__,
                      submit_command=shlex.join(argv), directives=directives,
                      run=RunDir(spec.run_dir), **self.context(spec))
        return DryRun(spec=spec, script=text, script_path=script_path, submit_argv=argv)

    # --- the rest touches the world ---------------------------------------------
    @abstractmethod
    def submit(self, run: Any, spec: Any) -> str:
        """Submit `run`'s script as it is on disk; returns the job id."""

    @abstractmethod
    def status(self, run: Any, job_id: str) -> JobStatus: ...

    @abstractmethod
    def log_files(self, run: Any, job_id: str) -> list[Path]: ...

    @abstractmethod
    def cancel(self, run: Any, job_id: str) -> None:
        """Ask the scheduler to end the job in whatever state it is (pending, held,
        running, requeued), so that it never runs again. Idempotent: `llmctl job
        cancel` calls it again while the job still waits in the queue."""


# --- the index of submitted jobs ------------------------------------------------

def index_file() -> Path:
    """Where llmctl remembers submitted jobs ($LLMCTL_STATE_DIR, else XDG state)."""
    base = os.environ.get("LLMCTL_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "llmctl")
    return Path(base) / "jobs.jsonl"


def record_submission(run_dir: Path, backend: str, job_id: str, name: str) -> None:
    """Append one line to the index (appends of a line are atomic enough for a log)."""
    path = index_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"run_dir": str(run_dir), "backend": backend, "job_id": job_id,
                                "name": name, "user": current_user(),
                                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                    + "\n")
    except OSError as e:
        raise LlmctlError(f"cannot record the job in {path}: {e.strerror or e}") from e


def current_user() -> str:
    """The login name jobs are recorded under (a shared LLMCTL_STATE_DIR holds many users')."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def read_index() -> list[dict[str, Any]]:
    path = index_file()
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn line from a crash: skip it, keep the rest
    return out


def try_command(argv: list[str], timeout: float = 60) -> Any:
    """Run a query whose failure is an answer (e.g. 'no such job'); None if it could not run."""
    import subprocess

    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def run_command(argv: list[str], what: str, timeout: float = 60) -> str:
    """Run a scheduler command; a failure becomes an LlmctlError quoting its stderr."""
    import subprocess

    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LlmctlError(f"{what}: `{argv[0]}` not found on this machine") from e
    except subprocess.TimeoutExpired as e:
        raise LlmctlError(f"{what}: `{shlex.join(argv)}` did not answer in {timeout:.0f} s") from e
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise LlmctlError(f"{what} failed: {shlex.join(argv)}: {err[-1] if err else 'exit ' + str(proc.returncode)}")
    return proc.stdout
