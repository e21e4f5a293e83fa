"""Run the watcher periodically: a scrontab entry (SLURM runs it as a batch job), a
self-requeueing SLURM job chain (for clusters whose SLURM has no scrontab), or a crontab line.

scrontab (SLURM >= 20.11) takes `#SCRON` lines with sbatch options followed by a
cron line; SLURM submits the command as a job at each time. The watcher's locks
make an overlap harmless, so the entry needs no extra guard. A managed block
between two marker comments lets `--install` replace its own entry and leave the
user's others alone.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from llmctl.errors import LlmctlError


def cron_expression(every: str) -> str:
    """'15m' -> '*/15 * * * *', '1h' -> '0 * * * *', '6h' -> '0 */6 * * *', '1d' -> '0 0 * * *'."""
    m = re.fullmatch(r"\s*(\d+)\s*(m|min|h|d)\s*", every or "")
    if not m:
        raise LlmctlError(f"--every: {every!r} is not an interval like 15m, 1h or 1d")
    n, unit = int(m.group(1)), m.group(2)
    if unit in ("m", "min"):
        if n in (60,):
            return "0 * * * *"
        if n < 1 or 60 % n:
            raise LlmctlError(f"--every: {every!r}: minutes must divide 60 (1, 2, 3, 5, 10, 15, 20, 30)")
        return "* * * * *" if n == 1 else f"*/{n} * * * *"
    if unit == "h":
        if n == 24:
            return "0 0 * * *"
        if n < 1 or 24 % n:
            raise LlmctlError(f"--every: {every!r}: hours must divide 24 (1, 2, 3, 4, 6, 8, 12)")
        return "0 * * * *" if n == 1 else f"0 */{n} * * *"
    if n != 1:
        raise LlmctlError(f"--every: {every!r}: use 1d (cron cannot count days evenly)")
    return "0 0 * * *"


def interval_seconds(every: str) -> int:
    """'30s' / '15m' / '1h' / '1d' -> seconds (the job chain takes any interval)."""
    m = re.fullmatch(r"\s*(\d+)\s*(s|m|min|h|d)\s*", every or "")
    if not m or int(m.group(1)) < 1:
        raise LlmctlError(f"--every: {every!r} is not an interval like 30s, 15m, 1h or 1d")
    return int(m.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]


def watcher_command(run_dir: str, suite: Optional[str]) -> list[str]:
    """The watcher, with absolute paths and this Python (cron runs with an empty environment)."""
    cmd = [sys.executable, "-m", "llmctl", "eval", "watch", "--run-dir", str(Path(run_dir).absolute())]
    if suite:
        cmd += ["--suite", str(Path(suite).absolute())]
    return cmd


def markers(run_dir: str) -> tuple[str, str]:
    tag = f"llmctl eval watch {Path(run_dir).absolute()}"
    return f"# BEGIN {tag}", f"# END {tag}"


def log_dir(run_dir: str) -> Path:
    return Path(run_dir).absolute() / "eval" / "logs"


def scrontab_entry(every: str, run_dir: str, suite: Optional[str], time_limit: str = "01:00:00",
                   partition: Optional[str] = None) -> str:
    run = Path(run_dir).absolute()
    opts = [f"--job-name={shlex.quote('eval-watch-' + run.name)}", f"--time={shlex.quote(time_limit)}",
            f"--output={shlex.quote(str(log_dir(run_dir) / 'watch-%j.out'))}", "--open-mode=append"]
    if partition:
        opts.append(f"--partition={shlex.quote(partition)}")
    begin, end = markers(run_dir)
    lines = [begin, *(f"#SCRON {o}" for o in opts),
             f"{cron_expression(every)} {shlex.join(watcher_command(run_dir, suite))}", end]
    return "\n".join(lines) + "\n"


def chain_paths(run_dir: str) -> tuple[Path, Path]:
    """(the chain's job script, the file whose presence stops the chain)."""
    ev = Path(run_dir).absolute() / "eval"
    return ev / "schedule-slurm.sh", ev / "schedule.stop"


def chain_job_name(run_dir: str) -> str:
    return "eval-watch-" + Path(run_dir).absolute().name


def chain_script(every: str, run_dir: str, suite: Optional[str], time_limit: str = "01:00:00",
                 partition: Optional[str] = None) -> str:
    """A batch job that queues its successor (`--begin=now+N`) and then runs the watcher.

    Debian's SLURM ships no scrontab; this is the classic chain that works on any
    SLURM. `--dependency=singleton` (one job of this name and user at a time) keeps a
    successor from starting before its predecessor ends, and the successor is queued
    first, so a watcher that fails does not end the chain. `touch` the stop file to end
    it: the next link exits at once without queueing another.
    """
    seconds = interval_seconds(every)
    script, stop = chain_paths(run_dir)
    opts = [f"--job-name={shlex.quote(chain_job_name(run_dir))}", f"--time={shlex.quote(time_limit)}",
            f"--output={shlex.quote(str(log_dir(run_dir) / 'watch-%j.out'))}", "--open-mode=append",
            "--dependency=singleton"]
    if partition:
        opts.append(f"--partition={shlex.quote(partition)}")
    return "\n".join([
        "#!/bin/bash",
        *(f"#SBATCH {o}" for o in opts),
        f"# llmctl eval schedule --launcher slurm-chain --every {shlex.quote(every)}: runs the checkpoint",
        f"# watcher, after queueing the next run {seconds} s later. Stop: touch {shlex.quote(str(stop))}",
        "set -uo pipefail",
        f"if [ -e {shlex.quote(str(stop))} ]; then echo \"stop file found: the chain ends\"; exit 0; fi",
        f"sbatch --parsable --begin=now+{seconds} {shlex.quote(str(script))}"
        " || echo \"could not queue the next run\" >&2",
        f"exec {shlex.join(watcher_command(run_dir, suite))}",
    ]) + "\n"


def install_chain(text: str, run_dir: str) -> Optional[str]:
    """Write the chain's script and queue its first run now, unless a run is already queued.

    Returns the job id queued (None when the chain was already running: the next
    link picks up the rewritten script, as it runs the file by path)."""
    from llmctl.fsutil import atomic_write_text

    if shutil.which("sbatch") is None:
        raise LlmctlError("sbatch not found on PATH: cannot queue the watcher job",
                          hint="run on a SLURM login node, or print the script and submit it there")
    script, stop = chain_paths(run_dir)
    log_dir(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(script, text)
    script.chmod(0o755)
    stop.unlink(missing_ok=True)
    q = subprocess.run(["squeue", "-h", "--me", "-n", chain_job_name(run_dir), "-o", "%i"],
                       capture_output=True, text=True)
    if q.returncode == 0 and q.stdout.strip():
        return None
    r = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if r.returncode != 0:
        raise LlmctlError(f"sbatch refused the watcher job: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip().split(";")[0]


def crontab_entry(every: str, run_dir: str, suite: Optional[str]) -> str:
    run = Path(run_dir).absolute()
    log = shlex.quote(str(run / "eval" / "watch.log"))
    begin, end = markers(run_dir)
    cmd = f"mkdir -p {shlex.quote(str(run / 'eval'))} && {shlex.join(watcher_command(run_dir, suite))} >> {log} 2>&1"
    return f"{begin}\n{cron_expression(every)} {cmd}\n{end}\n"


def install(entry: str, launcher: str, run_dir: str) -> str:
    """Put `entry` into the user's scrontab/crontab, replacing an earlier one for this run."""
    tool = "scrontab" if launcher == "slurm" else "crontab"
    if shutil.which(tool) is None:
        raise LlmctlError(f"{tool} not found on PATH: cannot install the entry",
                          hint=f"run without --install and add the printed entry with `{tool} -e`")
    cur = subprocess.run([tool, "-l"], capture_output=True, text=True)
    old = cur.stdout if cur.returncode == 0 else ""
    begin, end = markers(run_dir)
    kept, skipping = [], False
    for line in old.splitlines():
        if line.strip() == begin:
            skipping = True
        elif line.strip() == end:
            skipping = False
        elif not skipping:
            kept.append(line)
    new = "\n".join(kept + [entry.rstrip("\n")]) + "\n"
    r = subprocess.run([tool, "-"] if tool == "crontab" else [tool, "/dev/stdin"], input=new,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise LlmctlError(f"{tool} refused the entry: {r.stderr.strip() or r.stdout.strip()}")
    return new
