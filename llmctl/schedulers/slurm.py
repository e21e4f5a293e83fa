"""SLURM: `#SBATCH` scripts, submitted and tracked through submitit.

submitit writes the file it submits itself; a small executor subclass makes that
file the rendered script, byte for byte, so submitit's `SlurmJob` tracks state
(through `sacct`), knows the log paths and cancels. The log names in the script
follow submitit's `JobPaths` (`%j_0_log.out`) so both agree on where logs are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.schedulers.base import Directive, JobStatus, Scheduler, run_command

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
                            ("--qos", spec.qos), ("--constraint", spec.constraint),
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
            d.append(Directive("--dependency", "afterok:" + ":".join(spec.after)))
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
        import submitit

        script_text = run.script("slurm").read_text(encoding="utf-8")

        class _RenderedScriptExecutor(submitit.SlurmExecutor):
            """Submits the rendered script instead of a submitit-made one."""

            def _make_submission_file_text(self, command: str, uid: str) -> str:
                return script_text

            def _num_tasks(self) -> int:
                return 1

        run.logs.mkdir(parents=True, exist_ok=True)
        executor = _RenderedScriptExecutor(folder=run.logs)
        try:
            job = executor._submit_command("")
        except Exception as e:  # submitit raises plain errors carrying sbatch's message
            raise LlmctlError(f"sbatch refused {run.script('slurm')}: {str(e).strip().splitlines()[-1]}") from e
        return str(job.job_id)

    def status(self, run: Any, job_id: str) -> JobStatus:
        job = self._job(run, job_id)
        info = job.get_info(mode="force")
        state = info.get("State") or "UNKNOWN"
        if state.upper() == "UNKNOWN":
            # Not in sacct yet (just submitted) or gone: ask squeue.
            out = run_command(["squeue", "-h", "-j", job_id, "-o", "%T"], "squeue")
            state = out.split()[0] if out.strip() else "UNKNOWN"
        restarts = 0
        try:
            out = run_command(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", "JobID,State"], "sacct")
            # With -D, sacct lists one line per run of a requeued job.
            rows = [r for r in out.splitlines() if r.strip()]
            tops = {r.split("|")[0] for r in rows}
            restarts = max(0, len(rows) - len(tops))
        except LlmctlError:
            pass
        return JobStatus(job_id=job_id, state=state.split()[0].upper(), restarts=restarts,
                         exit_code=info.get("ExitCode"), detail={"node_list": info.get("NodeList")})

    def log_files(self, run: Any, job_id: str) -> list[Path]:
        job = self._job(run, job_id)
        files = [job.paths.stdout, job.paths.stderr]
        # An array's tasks each have their own logs.
        files += sorted(run.logs.glob(f"{job_id}_*_0_log.out")) + sorted(run.logs.glob(f"{job_id}_*_0_log.err"))
        return [f for f in files if f.is_file()]

    def cancel(self, run: Any, job_id: str) -> None:
        try:
            self._job(run, job_id).cancel(check=True)
        except Exception as e:
            raise LlmctlError(f"scancel {job_id} failed: {e}") from e


SCHEDULER = SlurmScheduler()
