"""CPU and host memory: `lscpu` (or /proc/cpuinfo) and /proc/meminfo (or `free -b`).

Also a rough peak fp32 rate for CPU-only nodes, from the vector ISA: it lets the
planner run on a laptop-sized demo, and is marked as an estimate in the profile;
`hw benchmark --component compute` replaces it with a measurement.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

# The flags that change what a matmul can reach on a CPU.
VECTOR_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd", "sve")


def run_lscpu() -> Optional[str]:
    """`lscpu` output with the C locale (so field names are English), or None."""
    exe = shutil.which("lscpu")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _int(text: Optional[str]) -> Optional[int]:
    m = re.match(r"\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def parse_lscpu(text: str) -> dict[str, Any]:
    """lscpu's 'Key: value' lines -> cpu_model, cpus, sockets, cores_per_socket, ... ."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    mhz = fields.get("CPU max MHz") or fields.get("CPU MHz")
    flags = set(fields.get("Flags", "").split())
    info = {
        "cpu_model": fields.get("Model name"),
        "cpus": _int(fields.get("CPU(s)")),
        "sockets": _int(fields.get("Socket(s)")),
        "cores_per_socket": _int(fields.get("Core(s) per socket")),
        "threads_per_core": _int(fields.get("Thread(s) per core")),
        "numa_nodes": _int(fields.get("NUMA node(s)")),
        "cpu_flags": [f for f in VECTOR_FLAGS if f in flags],
        "max_mhz": float(mhz) if mhz and re.match(r"^\d+(\.\d+)?$", mhz) else None,
    }
    return {k: v for k, v in info.items() if v is not None}


def read_proc_cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """Fallback without lscpu: model, logical CPUs, sockets and flags from /proc/cpuinfo."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {"cpus": os.cpu_count()} if os.cpu_count() else {}
    blocks = [b for b in text.split("\n\n") if b.strip()]
    first = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in blocks[0].splitlines())
    ) if blocks else {}
    sockets = {line.split(":")[1].strip() for line in text.splitlines() if line.startswith("physical id")}
    flags = set(first.get("flags", "").split())
    info = {"cpu_model": first.get("model name"), "cpus": len(blocks) or os.cpu_count(),
            "sockets": len(sockets) or None, "cpu_flags": [f for f in VECTOR_FLAGS if f in flags],
            "max_mhz": float(first["cpu MHz"]) if first.get("cpu MHz") else None}
    return {k: v for k, v in info.items() if v is not None}


def count_numa_nodes(root: str = "/sys/devices/system/node") -> Optional[int]:
    """NUMA nodes from sysfs (None where sysfs does not say)."""
    try:
        n = sum(1 for p in Path(root).iterdir() if re.fullmatch(r"node\d+", p.name))
    except OSError:
        return None
    return n or None


def parse_meminfo(text: str) -> Optional[float]:
    """MemTotal from /proc/meminfo text, in GB (10^9 bytes)."""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return round(int(m.group(1)) * 1024 / 1e9, 1) if m else None


def parse_free_b(text: str) -> Optional[float]:
    """The 'Mem:' total of `free -b`, in GB."""
    m = re.search(r"^Mem:\s+(\d+)", text, re.MULTILINE)
    return round(int(m.group(1)) / 1e9, 1) if m else None


def read_memory_gb(path: str = "/proc/meminfo") -> Optional[float]:
    """Host memory of this machine in GB."""
    try:
        return parse_meminfo(Path(path).read_text(encoding="ascii", errors="replace"))
    except OSError:
        return None


def read_cpu() -> tuple[dict[str, Any], Optional[str]]:
    """(CPU facts of this machine, raw lscpu text or None)."""
    raw = run_lscpu()
    info = parse_lscpu(raw) if raw else read_proc_cpuinfo()
    if "numa_nodes" not in info:
        n = count_numa_nodes()
        if n:
            info["numa_nodes"] = n
    return info, raw


def estimate_peak_flops(info: dict[str, Any]) -> Optional[float]:
    """Rough peak fp32 FLOP/s: physical cores × clock × FLOPs per cycle of the widest FMA.

    Two FMA units per core (x86 server cores since Haswell/Skylake-SP): AVX-512 gives
    2×16×2 = 64 fp32 FLOPs/cycle, AVX2+FMA 2×8×2 = 32; otherwise assume 8 (SSE).
    """
    cpus = info.get("cpus")
    if not cpus:
        return None
    if info.get("sockets") and info.get("cores_per_socket"):
        cores = info["sockets"] * info["cores_per_socket"]
    else:
        cores = max(1, cpus // (info.get("threads_per_core") or 1))
    flags = set(info.get("cpu_flags", []))
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    ghz = (info.get("max_mhz") or 2000.0) / 1000
    return cores * ghz * 1e9 * per_cycle
