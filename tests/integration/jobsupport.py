"""Helpers for the job integration tests: a site-config for the local SLURM
cluster (scripts/slurm-local.sh), hand-written plans, and an interpreter wrapper
that runs the stand-in trainer for `-m llmctl.train`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin_train.py"
VENV_BIN = Path(sys.executable).parent


def slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in out.stdout.split())


def python_wrapper(tmp: Path) -> Path:
    """An interpreter that runs the stand-in for `-m llmctl.train`, else real Python."""
    w = tmp / "standin-python"
    w.write_text("#!/bin/bash\n"
                 f'if [ "$1" = -m ] && [ "$2" = llmctl.train ]; then shift 2; exec {sys.executable} {STANDIN} "$@"; fi\n'
                 f'exec {sys.executable} "$@"\n')
    w.chmod(0o755)
    return w


def write_site(tmp: Path, name: str = "testslurm", scheduler: str = "slurm", launcher: str = "srun",
               env: dict | None = None, extra: str = "", cpus: int = 2) -> Path:
    env = {"OMP_NUM_THREADS": "1", **(env or {})}
    env_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    p = tmp / f"{name}.toml"
    p.write_text(f'''name = "{name}"
scheduler = "{scheduler}"
default_partition = "debug"
gpu_request = "none"
launcher = "{launcher}"
requeue_grace_s = 30
python = "{python_wrapper(tmp)}"
{extra}
[partitions.debug]
nodes = 1
cpus_per_node = {cpus}
memory_gb = 2
max_time = "00:30:00"

[env]
{env_lines}
''')
    return p


def write_plan(tmp: Path, ranks: int = 1) -> Path:
    p = tmp / f"plan{ranks}.toml"
    p.write_text(f'[inputs]\nmodel = "models/tiny.json"\nnodes = 1\ngpus_per_node = {ranks}\n'
                 f'global_batch = {ranks}\n\n[parallelism]\ndp = {ranks}\n')
    return p


def wait_state(cli, run, states=("COMPLETED",), timeout=90.0) -> dict:
    """Poll `llmctl job status --json` until the state is final; returns it."""
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
    deadline = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < deadline:
        r = cli("job", "status", str(run), "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        if st["state"] in final:
            return st
        time.sleep(1)
    raise AssertionError(f"job did not finish in {timeout} s: {st}")


def wait_for_text(path_glob, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in path_glob():
            if text in p.read_text(errors="replace"):
                return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared in the logs")
