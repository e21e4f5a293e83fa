"""SLURM: `#SBATCH` scripts, submitted through submitit, tracked with SLURM's own tools.

submitit writes the file it submits itself; a small executor subclass makes that
file the rendered script, byte for byte. The log names in the script follow
submitit's `JobPaths` (`%j_0_log.out`) so both agree on where logs are.

State comes from `scontrol show job` while slurmctld still holds the job (it is
current; sacct can lag or miss the end of a run that was requeued and then
cancelled) and from `sacct -D` (one line per run) for the history: how the
previous run ended, and the exit code once slurmctld has forgotten the job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError
from llmctl.schedulers.base import FINAL_STATES, Directive, JobStatus, Scheduler, try_command

MAIL_ORDER = ("BEGIN", "END", "FAIL", "REQUEUE", "TIME_LIMIT", "ALL")


def _gpu_directive(spec: Any) -> list[Directive]:
    if not spec.gpus_per_node or spec.gpu_request == "none":
        return []
    typed = f"{spec.gpu_type}:" if spec.gpu_type else ""
    if spec.gpu_request == "gres":
        return [Directive("--gres", f"gpu:{typed}{spec.gpus_per_node}")]
    return [Directive("--gpus-per-node", f"{typed}{spec.gpus_per_node}")]


def _raw(directive: str) -> Directive:
    """A site's extra directive, `--flag=value` or `--flag`."""
    flag, sep, value = directive.partition("=")
    return Directive(flag.strip(), value if sep else None)


class SlurmScheduler(Scheduler):
    name = "slurm"

    def context(self, spec: Any) -> dict[str, Any]:
        """srun's per-task logs (`%t`), beside the batch script's (task 0's is the same file,
        appended to, as submitit does)."""
        import shlex

        from llmctl.jobs.rundir import RunDir

        run = RunDir(spec.run_dir)
        array = bool(spec.array)
        out = shlex.quote(str(run.slurm_log("stdout", array, "%t")))
        err = shlex.quote(str(run.slurm_log("stderr", array, "%t")))
        return {"task_logs": f" --unbuffered --open-mode=append --output={out} --error={err}"}

    def submit_argv(self, script: Path) -> list[str]:
        return ["sbatch", str(script)]

    def directives(self, spec: Any) -> list[Directive]:
        from llmctl.jobs.rundir import RunDir

        run = RunDir(spec.run_dir)
        array = bool(spec.array)
        d = [
            Directive("--job-name", spec.name),
            Directive("--nodes", str(spec.nodes)),
            Directive("--ntasks-per-node", str(spec.ranks_per_node)),
            Directive("--cpus-per-task", str(spec.cpus_per_task)),
            Directive("--mem", f"{spec.mem_gb}G" if spec.mem_gb else "0"),
            Directive("--time", spec.time_limit),
            Directive("--output", str(run.slurm_log("stdout", array))),
            Directive("--error", str(run.slurm_log("stderr", array))),
            # A requeued job appends to the same log instead of truncating it.
            Directive("--open-mode", "append"),
        ]
        d += _gpu_directive(spec)
        for flag, value in (("--partition", spec.partition), ("--account", spec.account),
                            ("--qos", spec.qos), ("--reservation", spec.reservation),
                            ("--constraint", spec.constraint),
                            ("--mail-user", spec.mail_user)):
            if value:
                d.append(Directive(flag, value))
        if spec.mail_user and spec.mail_types:
            types = sorted(spec.mail_types, key=MAIL_ORDER.index)
            d.append(Directive("--mail-type", ",".join(types)))
        if spec.exclusive:
            d.append(Directive("--exclusive"))
        if spec.array:
            limit = f"%{spec.array_parallel}" if spec.array_parallel else ""
            d.append(Directive("--array", f"0-{spec.array - 1}{limit}"))
        if spec.after:
            from llmctl.jobs.resolve import dependency_list

            d.append(Directive("--dependency", dependency_list(spec.after)))
            # A child of a failed parent would wait forever; cancel it instead.
            d.append(Directive("--kill-on-invalid-dep", "yes"))
        if spec.requeue:
            d.append(Directive("--requeue"))
        if spec.signal_grace_s:
            # B: signals the batch shell, which forwards USR1 to the program.
            d.append(Directive("--signal", f"B:USR1@{spec.signal_grace_s}"))
        d += [_raw(x) for x in spec.extra_directives]
        return d

    # --- submitit ----------------------------------------------------------------
    def _job(self, run: Any, job_id: str) -> Any:
        import submitit

        return submitit.SlurmJob(folder=run.logs, job_id=job_id)

    def submit(self, run: Any, spec: Any) -> str:
        import contextlib
        import io
        import shutil

        import submitit

        script = run.script("slurm")
        script_text = script.read_text(encoding="utf-8")
        if not shutil.which("sbatch"):
            raise LlmctlError(f"sbatch is not installed here: the script is written at {script}",
                              hint="submit from a login node of the cluster")

        class _RenderedScriptExecutor(submitit.SlurmExecutor):
            """Submits the rendered script instead of a submitit-made one."""

            def _make_submission_file_text(self, command: str, uid: str) -> str:
                return script_text

            def _num_tasks(self) -> int:
                return 1

        run.logs.mkdir(parents=True, exist_ok=True)
        executor = _RenderedScriptExecutor(folder=run.logs)
        # submitit prints sbatch's stderr itself before raising it: keep it, say it once.
        printed = io.StringIO()
        try:
            with contextlib.redirect_stderr(printed):
                job = executor._submit_command("")
        except Exception as e:  # submitit raises plain errors carrying sbatch's message
            message = sbatch_message(str(e) or printed.getvalue())
            raise LlmctlError(f"sbatch refused {script}: {message}") from e
        return str(job.job_id)

    def status(self, run: Any, job_id: str) -> JobStatus:
        live = _scontrol_jobs(job_id)
        runs = _sacct_runs(job_id)
        units = {key: _unit(key, live.get(key), runs.get(key, [])) for key in {*live, *runs}}
        if not units:
            return JobStatus(job_id, "UNKNOWN", detail={"reason": "neither scontrol nor sacct knows the job"})
        if list(units) == [job_id]:
            return units[job_id]
        return _aggregate(job_id, units)

    def log_files(self, run: Any, job_id: str) -> list[Path]:
        job = self._job(run, job_id)
        files = [job.paths.stdout, job.paths.stderr]
        # An array's tasks each have their own logs.
        files += sorted(run.logs.glob(f"{job_id}_*_0_log.out")) + sorted(run.logs.glob(f"{job_id}_*_0_log.err"))
        # Each srun task's own log (%j_%t), after the batch script's.
        files += sorted(run.logs.glob(f"{job_id}_*_log.out")) + sorted(run.logs.glob(f"{job_id}_*_log.err"))
        return list(dict.fromkeys(f for f in files if f.is_file()))

    def cancel(self, run: Any, job_id: str) -> None:
        # First make the job non-requeueable: whatever still runs `scontrol requeue` on its
        # way out (a preemption in progress, an older program that took scancel's SIGTERM
        # for a preemption) is then refused by slurmctld instead of bringing the job back.
        # It fails harmlessly for a job that has already ended.
        try_command(["scontrol", "update", f"JobId={job_id}", "Requeue=0"])
        r = try_command(["scancel", job_id])
        if r is None:
            raise LlmctlError(f"scancel {job_id}: `scancel` is not installed here or did not answer")
        if r.returncode != 0:
            raise LlmctlError(f"scancel {job_id} failed: {sbatch_message(r.stderr or r.stdout)}")


# --- reading SLURM's answers -------------------------------------------------------

_SCONTROL_KEYS = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Restarts|ExitCode|Reason)=(\S*)")
_RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "RESIZING", "SIGNALING", "SUSPENDED",
            "STOPPED")


def sbatch_message(text: str) -> str:
    """A SLURM tool's stderr as one line: each distinct message once, without 'sbatch: error:'."""
    lines = [re.sub(r"^\w+: error: ", "", ln.strip()) for ln in text.splitlines() if ln.strip()]
    return "; ".join(dict.fromkeys(lines)) or "no message"


def parse_exit(code: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """SLURM's 'EXIT:SIGNAL' -> (exit code, signal or None): '127:0' -> (127, None)."""
    m = re.fullmatch(r"(\d+):(\d+)", (code or "").strip())
    if not m:
        return None, None
    signal = int(m.group(2))
    return int(m.group(1)), signal or None


def _key(job_id: str, fields: dict[str, str]) -> str:
    """'123' or an array task's '123_4' (sacct's spelling; pending tasks '123_[5-9%2]')."""
    task = fields.get("ArrayTaskId")
    if not task or task == "N/A":
        return fields.get("JobId", job_id)
    return f"{fields.get('ArrayJobId', job_id)}_{task if task.isdigit() else '[' + task + ']'}"


def _scontrol_jobs(job_id: str) -> dict[str, dict[str, str]]:
    """What slurmctld holds now, per job or array task; {} once it has forgotten the job."""
    r = try_command(["scontrol", "show", "job", "-o", job_id])
    if r is None or r.returncode != 0:
        return {}
    out = {}
    for line in r.stdout.splitlines():
        fields = dict(_SCONTROL_KEYS.findall(line))
        if "JobId" in fields and "JobState" in fields:
            out[_key(job_id, fields)] = fields
    return out


def _sacct_runs(job_id: str) -> dict[str, list[tuple[str, str]]]:
    """Every run of the job (or of each array task), oldest first: [(state, 'EXIT:SIGNAL')]."""
    r = try_command(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", "JobID,State,ExitCode"])
    out: dict[str, list[tuple[str, str]]] = {}
    if r is None or r.returncode != 0:
        return out
    for line in r.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and parts[1]:
            out.setdefault(parts[0], []).append((parts[1].split()[0], parts[2]))
    return out


def _unit(key: str, live: Optional[dict[str, str]], runs: list[tuple[str, str]]) -> JobStatus:
    """One job (or array task) from scontrol (current) and its sacct runs (history)."""
    if live is not None:
        state = live["JobState"].split()[0]
        restarts = int(live.get("Restarts") or 0) if (live.get("Restarts") or "0").isdigit() else 0
        code = live.get("ExitCode")
    else:
        state, code = runs[-1]
        restarts = len(runs) - 1
    # Run i of the job is line i of sacct -D; the current one is line `restarts`.
    last = runs[restarts - 1][0] if 0 < restarts <= len(runs) else None
    if last in _RUNNING or last == "PENDING":
        # slurmctld has requeued the job but slurmdbd has not yet closed the run before
        # (it lags on a busy controller): how it ended is not known yet, not "RUNNING".
        last = None
    exit_code, signal = parse_exit(code) if state in FINAL_STATES else (None, None)
    detail = {"reason": live["Reason"]} if live and live.get("Reason") not in (None, "None") else {}
    return JobStatus(key, state, restarts=restarts, exit_code=exit_code, exit_signal=signal,
                     last_state=last, detail=detail)


def _aggregate(job_id: str, units: dict[str, JobStatus]) -> JobStatus:
    """An array job: running while a task runs, pending while one waits; once all have
    ended, COMPLETED if all did, else the first task's other end (FAILED, CANCELLED...)."""
    tasks = [units[k] for k in sorted(units, key=lambda k: (len(k), k))]
    running = [t for t in tasks if t.state in _RUNNING]
    waiting = [t for t in tasks if not t.done and t.state not in _RUNNING]
    ended_badly = [t for t in tasks if t.done and t.state != "COMPLETED"]
    pick = (running or waiting or ended_badly or tasks)[0]
    restarted = [t for t in tasks if t.restarts]
    return JobStatus(job_id, pick.state, restarts=sum(t.restarts for t in tasks),
                     exit_code=pick.exit_code if not (running or waiting) else None,
                     exit_signal=pick.exit_signal if not (running or waiting) else None,
                     last_state=restarted[-1].last_state if restarted else None,
                     detail={"tasks": {t.job_id: t.state for t in tasks}})


SCHEDULER = SlurmScheduler()
