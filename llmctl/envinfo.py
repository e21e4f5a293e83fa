"""`llmctl env`: what to paste into a bug report — versions, paths, detected hardware.

Package versions come from installed metadata, so nothing heavy is imported.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from importlib import metadata
from typing import Any

from llmctl import __version__

PACKAGES = ("click", "pydantic", "jinja2", "submitit", "pulp", "highspy", "nvidia-ml-py", "tomli-w",
            "torch", "numpy", "deepspeed", "h5py", "tokenizers", "safetensors", "mpi4py", "transformers")
TOOLS = ("sbatch", "squeue", "srun", "qsub", "mpirun", "torchrun", "kubectl", "nvidia-smi",
         "apptainer", "singularity", "bwrap")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    return None


def _gpus() -> dict[str, Any]:
    """GPUs through NVML; a machine without a driver reports none, never crashes."""
    try:
        import pynvml
    except ImportError:
        return {"count": 0, "note": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return {"count": 0, "note": f"no NVIDIA driver ({e})"}
    try:
        n = pynvml.nvmlDeviceGetCount()
        names = []
        for i in range(n):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"count": n, "names": names,
                "driver": driver.decode() if isinstance(driver, bytes) else driver}
    finally:
        pynvml.nvmlShutdown()


def collect() -> dict[str, Any]:
    """Everything `llmctl env` reports."""
    from llmctl.resources import data_dir
    from llmctl.sites import search_path

    return {
        "llmctl": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "tools": {t: shutil.which(t) for t in TOOLS},
        "paths": {
            "package": os.path.dirname(os.path.abspath(__file__)),
            "templates": str(data_dir("templates")),
            "solvers": str(data_dir("solvers")),
            "site_configs_search": [f"{origin}: {d}" for origin, d in search_path()],
        },
        "hardware": {"cpus": os.cpu_count(), "memory_gb": _memory_gb(), "gpus": _gpus()},
        "environment": {k: v for k, v in os.environ.items()
                        if k.startswith(("LLMCTL_", "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"))},
    }


def render_text(info: dict[str, Any]) -> str:
    """Human-readable form of `collect()`."""
    lines = [f"llmctl {info['llmctl']}  python {info['python']} ({info['executable']})",
             f"platform: {info['platform']}", "packages:"]
    lines += [f"  {k}: {v or '-'}" for k, v in info["packages"].items()]
    lines.append("tools:")
    lines += [f"  {k}: {v or '-'}" for k, v in info["tools"].items()]
    lines.append("paths:")
    for k, v in info["paths"].items():
        if isinstance(v, list):
            lines.append(f"  {k}:")
            lines += [f"    {x}" for x in v]
        else:
            lines.append(f"  {k}: {v}")
    hw = info["hardware"]
    gpus = hw["gpus"]
    gpu_text = f"{gpus['count']}" + (f" ({', '.join(gpus['names'])}; driver {gpus['driver']})"
                                     if gpus.get("names") else f" ({gpus.get('note', '')})")
    lines.append(f"hardware: {hw['cpus']} CPUs, {hw['memory_gb']} GB memory, GPUs: {gpu_text}")
    if info["environment"]:
        lines.append("environment:")
        lines += [f"  {k}={v}" for k, v in sorted(info["environment"].items())]
    return "\n".join(lines)
