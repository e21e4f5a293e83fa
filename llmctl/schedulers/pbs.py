"""PBS: `#PBS` scripts in the PBS Pro (`-l select=`) or Torque (`-l nodes=:ppn=`) dialect.

Submitted with `qsub`, tracked with `qstat -f` (PBS Pro: `qstat -x -f`, which also
shows finished jobs and their Exit_status; Torque's `-x` means XML and its `qstat -f`
keeps completed jobs for `keep_completed` seconds), cancelled with `qdel`. PBS has
no signal-before-kill directive like SLURM's `--signal`; `-r y` makes the job
rerunnable, so the server requeues it when it preempts it or loses its node. The
program sees SIGTERM for a qdel and for a preemption alike: it checkpoints and
exits without requeueing; whether the job runs again is the server's decision.
PBS has no CANCELLED state: `cancel` leaves a `cancelled` file in the run folder.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.schedulers.base import Directive, JobStatus, Scheduler, run_command, try_command

# PBS job names: a letter, then letters, digits, '_', '-', '.'; Torque keeps 15 characters.
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")
MAIL_LETTERS = {"BEGIN": "b", "END": "e", "FAIL": "a", "ALL": "abe", "REQUEUE": "a", "TIME_LIMIT": "a"}
QSTAT_STATES = {"Q": "PENDING", "H": "PENDING", "W": "PENDING", "T": "PENDING", "R": "RUNNING",
                "E": "COMPLETING", "B": "RUNNING", "S": "SUSPENDED", "X": "COMPLETED", "F": "COMPLETED",
                "C": "COMPLETED"}


def pbs_name(name: str, dialect: str) -> str:
    """A name qsub accepts (the full name stays in LLMCTL_JOB_NAME)."""
    safe = _NAME_BAD.sub("_", name)
    if not safe[:1].isalpha():
        safe = "j" + safe
    return safe[:15] if dialect == "torque" else safe[:230]


def walltime(seconds: int) -> str:
    """HH:MM:SS with hours past 24 (PBS has no days field)."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


class PbsScheduler(Scheduler):
    name = "pbs"

    def submit_argv(self, script: Path) -> list[str]:
        return ["qsub", str(script)]

    def directives(self, spec: Any) -> list[Directive]:
        from llmctl.jobs.rundir import RunDir

        run = RunDir(spec.run_dir)
        sp = " "
        d = [Directive("-N", pbs_name(spec.name, spec.pbs_dialect), sp),
             Directive("-l", f"walltime={walltime(spec.time_limit_s)}", sp),
             Directive("-j", "oe", sp),
             Directive("-o", str(run.logs / "pbs.out"), sp),
             Directive("-r", "y" if spec.requeue else "n", sp)]
        if spec.pbs_dialect == "torque":
            res = f"nodes={spec.nodes}:ppn={spec.ranks_per_node * spec.cpus_per_task}"
            if spec.gpus_per_node:
                res += f":gpus={spec.gpus_per_node}"
            d.append(Directive("-l", res, sp))
            if spec.mem_gb:
                d.append(Directive("-l", f"mem={spec.mem_gb * spec.nodes}gb", sp))
            if spec.exclusive:
                d.append(Directive("-l", "naccesspolicy=singlejob", sp))
        else:
            chunk = (f"select={spec.nodes}:ncpus={spec.ranks_per_node * spec.cpus_per_task}"
                     f":mpiprocs={spec.ranks_per_node}")
            if spec.gpus_per_node:
                chunk += f":ngpus={spec.gpus_per_node}"
            if spec.mem_gb:
                chunk += f":mem={spec.mem_gb}gb"
            d.append(Directive("-l", chunk, sp))
            d.append(Directive("-l", "place=scatter:excl" if spec.exclusive else "place=scatter", sp))
        if spec.partition:
            d.append(Directive("-q", spec.partition, sp))
        if spec.account:
            d.append(Directive("-A", spec.account, sp))
        if spec.mail_user:
            d.append(Directive("-M", spec.mail_user, sp))
            letters = sorted({ch for t in spec.mail_types for ch in MAIL_LETTERS.get(t, "")})
            if letters:
                d.append(Directive("-m", "".join(letters), sp))
        if spec.array:
            limit = f"%{spec.array_parallel}" if spec.array_parallel else ""
            flag = "-t" if spec.pbs_dialect == "torque" else "-J"
            d.append(Directive(flag, f"0-{spec.array - 1}{limit}", sp))
        if spec.after:
            from llmctl.jobs.resolve import dependency_list

            d.append(Directive("-W", "depend=" + dependency_list(spec.after), sp))
        for raw in spec.extra_directives:
            flag, _, value = raw.partition(" ")
            d.append(Directive(flag, value or None, sp))
        return d

    def submit(self, run: Any, spec: Any) -> str:
        out = run_command(self.submit_argv(run.script(self.name)), "qsub")
        return out.strip().splitlines()[-1].strip()

    def status(self, run: Any, job_id: str) -> JobStatus:
        spec = run.load_spec()
        # PBS Pro shows a finished job only with -x; Torque's -x is XML output.
        argv = ["qstat", "-f", job_id] if spec.pbs_dialect == "torque" else ["qstat", "-x", "-f", job_id]
        r = try_command(argv)
        if r is None:
            raise LlmctlError(f"qstat: `{argv[0]}` not found on this machine or did not answer")
        if r.returncode != 0 or "job_state" not in r.stdout:
            # The server has forgotten the job (Torque after keep_completed, or it was deleted).
            if run.cancelled_file.exists():
                return JobStatus(job_id, "CANCELLED", detail={"reason": "gone from qstat after qdel"})
            return JobStatus(job_id, "UNKNOWN", detail={"reason": (r.stderr or r.stdout).strip()[:200]})
        return parse_qstat(job_id, r.stdout, cancelled=run.cancelled_file.exists())

    def log_files(self, run: Any, job_id: str) -> list[Path]:
        return sorted(p for p in run.logs.glob("pbs.out*") if p.is_file())

    def cancel(self, run: Any, job_id: str) -> None:
        # qdel ends a queued, held, running or requeued job; the server does not rerun a
        # deleted job. PBS has no CANCELLED state, so remember that we asked.
        first = not run.cancelled_file.exists()
        if first:
            run.cancelled_file.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        r = try_command(["qdel", job_id])
        if r is not None and r.returncode == 0:
            return
        if r is not None and re.search(r"invalid for state", r.stderr, re.I):
            return  # already being deleted
        if first:
            # Not deleted by us: it had already ended by itself (or qdel failed).
            run.cancelled_file.unlink(missing_ok=True)
        if r is None:
            raise LlmctlError(f"qdel {job_id}: `qdel` is not installed here or did not answer")
        if not re.search(r"finished|Unknown Job", r.stderr, re.I):
            raise LlmctlError(f"qdel {job_id} failed: {r.stderr.strip() or r.stdout.strip()}")


def parse_qstat(job_id: str, out: str, cancelled: bool = False) -> JobStatus:
    """`qstat -f` output (PBS Pro or Torque) -> JobStatus.

    Exit_status (PBS Pro) / exit_status (Torque): the script's exit code; 256 + N
    when signal N killed it; negative for the server's own failures (e.g. -1: the
    job could not start). run_count (PBS Pro) / start_count (Torque) counts runs.
    """
    fields = dict(re.findall(r"^\s*([\w.]+) = (.*)$", out, flags=re.M))
    code = fields.get("job_state", "?").strip()
    state = QSTAT_STATES.get(code, code)
    raw = (fields.get("Exit_status") or fields.get("exit_status") or "").strip()
    exit_code = signal = None
    if re.fullmatch(r"-?\d+", raw) and state == "COMPLETED":
        n = int(raw)
        if n >= 256:
            signal = n - 256
        else:
            exit_code = n
        if n != 0:
            state = "FAILED"
    if cancelled and state in ("COMPLETED", "FAILED"):
        state = "CANCELLED"
    runs = (fields.get("run_count") or fields.get("start_count") or "").strip()
    restarts = max(0, int(runs) - 1) if runs.isdigit() else 0
    return JobStatus(job_id, state, restarts=restarts, exit_code=exit_code, exit_signal=signal)


SCHEDULER = PbsScheduler()
