"""nvidia-smi's output: `nvidia-smi -q -x` (devices) and `nvidia-smi topo -m` (link matrix).

The probe reads GPUs through NVML; nvidia-smi is the fallback where nvidia-ml-py
cannot load NVML (for example a container with the tool but an odd library path),
and its raw output is what `--verbose` keeps next to the profile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from typing import Any, Optional

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NUM = re.compile(r"[-+]?\d+(?:\.\d+)?")


def run(*args: str, timeout: float = 20) -> Optional[str]:
    """stdout of `nvidia-smi args...`, or None when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def parse_topo(text: str) -> list[list[str]]:
    """`nvidia-smi topo -m` -> the GPU×GPU matrix (NIC columns and the legend dropped)."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    header = next((line for line in lines if re.search(r"\bGPU0\b", line) and not line.startswith("GPU0")), None)
    if header is None:
        return []
    cols = [c.strip() for c in header.split("\t") if c.strip()]
    gpu_cols = [i for i, c in enumerate(cols) if re.fullmatch(r"GPU\d+", c)]
    matrix = []
    for line in lines:
        if not re.match(r"^GPU\d+\s", line):
            continue
        cells = [c.strip() for c in line.split("\t")]
        values = cells[1:]
        matrix.append([values[i] if i < len(values) else "?" for i in gpu_cols])
    return matrix


def _num(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    m = _NUM.search(text)
    return float(m.group()) if m else None


def parse_query_xml(text: str) -> dict[str, Any]:
    """`nvidia-smi -q -x` -> {"driver", "cuda_driver", "devices": [...]} in the NVML reader's shape."""
    root = ET.fromstring(text)
    devices = []
    for i, gpu in enumerate(root.findall("gpu")):
        def get(path: str) -> Optional[str]:
            el = gpu.find(path)
            return el.text.strip() if el is not None and el.text and el.text.strip() != "N/A" else None

        mib = _num(get("fb_memory_usage/total"))
        gen, width = _num(get("pci/pci_gpu_link_info/pcie_gen/max_link_gen")), _num(
            get("pci/pci_gpu_link_info/link_widths/max_link_width"))
        power = _num(get("gpu_power_readings/current_power_limit") or get("power_readings/power_limit"))
        sm = _num(get("max_clocks/sm_clock") or get("max_clocks/graphics_clock"))
        mem = _num(get("max_clocks/mem_clock"))
        mig = get("mig_mode/current_mig")
        dev = {
            "id": i,
            "name": get("product_name") or "unknown GPU",
            "memory_gb": round(mib * 2**20 / 1e9, 2) if mib else None,
            "memory_mib": int(mib) if mib else None,
            "uuid": get("uuid"),
            "pci_bus_id": gpu.get("id") or get("pci/pci_bus_id"),
            "power_limit_w": power,
            "max_sm_clock_mhz": int(sm) if sm else None,
            "max_mem_clock_mhz": int(mem) if mem else None,
            "pcie_gen": int(gen) if gen else None,
            "pcie_width": int(width) if width else None,
            "mig_enabled": None if mig is None else mig.lower() == "enabled",
        }
        devices.append({k: v for k, v in dev.items() if v is not None})
    return {"driver": (root.findtext("driver_version") or "").strip() or None,
            "cuda_driver": (root.findtext("cuda_version") or "").strip() or None,
            "devices": devices}
