"""Run the watcher periodically: a scrontab entry (SLURM runs it as a batch job) or a crontab line.

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
