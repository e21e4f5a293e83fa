"""PBS: `#PBS` scripts in the PBS Pro (`-l select=`) or Torque (`-l nodes=:ppn=`) dialect.

Submitted with `qsub`, tracked with `qstat -f`, cancelled with `qdel`. PBS has no
signal-before-kill directive like SLURM's `--signal`; `-r y` makes the job
rerunnable, and the program checkpoints on the SIGTERM that precedes a kill.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmctl.schedulers.base import Directive, JobStatus, Scheduler, run_command

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
            d.append(Directive("-W", "depend=afterok:" + ":".join(spec.after), sp))
        for raw in spec.extra_directives:
            flag, _, value = raw.partition(" ")
            d.append(Directive(flag, value or None, sp))
        return d

    def submit(self, run: Any, spec: Any) -> str:
        out = run_command(self.submit_argv(run.script(self.name)), "qsub")
        return out.strip().splitlines()[-1].strip()

    def status(self, run: Any, job_id: str) -> JobStatus:
        out = run_command(["qstat", "-f", job_id], "qstat")
        fields = dict(re.findall(r"^\s*([\w.]+) = (.*)$", out, flags=re.M))
        code = fields.get("job_state", "?")
        state = QSTAT_STATES.get(code, code)
        exit_status = fields.get("exit_status") or fields.get("Exit_status")
        if state == "COMPLETED" and exit_status not in (None, "0"):
            state = "FAILED"
        return JobStatus(job_id, state, exit_code=exit_status,
                         restarts=int(fields.get("run_count", "1") or 1) - 1 if "run_count" in fields else 0)

    def log_files(self, run: Any, job_id: str) -> list[Path]:
        return sorted(p for p in run.logs.glob("pbs.out*") if p.is_file())

    def cancel(self, run: Any, job_id: str) -> None:
        run_command(["qdel", job_id], "qdel")


SCHEDULER = PbsScheduler()
