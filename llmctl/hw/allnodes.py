"""`hw probe --all-nodes`: probe every node of the current SLURM allocation and merge.

One `srun` task per node runs `llmctl hw probe --format json`; each task's stdout
goes to its own file (srun's `%N` names it after the node) in a folder under the
current directory, which on a cluster is on the shared filesystem every node sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.hw.profile import merge_nodes, python_cmd


def srun_command(nodes: int, out_dir: Path) -> list[str]:
    """The srun line: one probe task per node, stdout per node into `out_dir`."""
    return ["srun", "--overlap", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            f"--output={out_dir}/node-%N.json", f"--error={out_dir}/node-%N.err",
            *python_cmd(), "hw", "probe", "--format", "json"]


def probe_all(timeout: float = 300) -> tuple[dict[str, Any], list[str]]:
    """(merged profile data, differences) of every node in the allocation."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        raise LlmctlError("--all-nodes runs inside a SLURM allocation, and SLURM_JOB_ID is not set",
                          hint="run it under `salloc -N <nodes>` or inside an sbatch script")
    if shutil.which("srun") is None:
        raise LlmctlError("--all-nodes needs `srun`, which is not on PATH")
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)
    out_dir = Path(tempfile.mkdtemp(prefix=f".llmctl-probe-{job}-", dir=os.getcwd()))
    try:
        try:
            proc = subprocess.run(srun_command(nodes, out_dir), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise LlmctlError(f"the per-node probes did not finish in {timeout:.0f} s") from e
        profiles, failures = [], []
        for f in sorted(out_dir.glob("node-*.json")):
            try:
                profiles.append(json.loads(f.read_text(encoding="utf-8")))
            except json.JSONDecodeError:
                err = f.with_suffix(".err")
                detail = err.read_text(encoding="utf-8", errors="replace").strip() if err.exists() else ""
                failures.append(f"{f.stem[5:]}: {detail.splitlines()[-1] if detail else 'no profile'}")
        if proc.returncode != 0 or failures or len(profiles) != nodes:
            detail = "; ".join(failures) or proc.stderr.strip().splitlines()[-1:] or ["?"]
            raise LlmctlError(f"probing {nodes} node(s) got {len(profiles)} profile(s): "
                              f"{detail if isinstance(detail, str) else detail[0]}")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return merge_nodes(profiles)
