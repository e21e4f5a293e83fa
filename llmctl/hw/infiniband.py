"""InfiniBand and RoCE ports from /sys/class/infiniband (rate, state, link layer, NUMA node).

Read straight from sysfs, so no `ibstat`/`ibv_devinfo` is needed on the node. The
`root` argument lets a test point it at a folder laid out like sysfs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from llmctl.hw.links import ib_rate_to_gbytes

SYSFS = "/sys/class/infiniband"


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def read_ports(root: str | Path = SYSFS) -> list[dict[str, Any]]:
    """One entry per port of every HCA; empty where there is no InfiniBand."""
    root = Path(root)
    if not root.is_dir():
        return []
    ports = []
    for dev in sorted(root.iterdir()):
        numa = _read(dev / "device" / "numa_node")
        for port_dir in sorted((dev / "ports").glob("*"), key=lambda p: int(p.name) if p.name.isdigit() else 0):
            if not port_dir.name.isdigit():
                continue
            rate = _read(port_dir / "rate")  # "200 Gb/sec (4X HDR)"
            m = re.match(r"\s*([\d.]+)\s*Gb/sec", rate or "")
            state = _read(port_dir / "state")  # "4: ACTIVE"
            entry = {
                "device": dev.name,
                "port": int(port_dir.name),
                "rate_gbps": float(m.group(1)) if m else None,
                "state": state.split(":", 1)[-1].strip() if state else None,
                "link_layer": _read(port_dir / "link_layer"),
                # sysfs says -1 where the platform has no NUMA information.
                "numa_node": int(numa) if numa and numa.lstrip("-").isdigit() and int(numa) >= 0 else None,
            }
            ports.append({k: v for k, v in entry.items() if v is not None})
    return ports


def active_bandwidth_gbps(ports: list[dict[str, Any]]) -> Optional[float]:
    """Sum of the active ports' rates in GB/s, one direction (None without active ports)."""
    rates = [p["rate_gbps"] for p in ports if p.get("state") == "ACTIVE" and p.get("rate_gbps")]
    return ib_rate_to_gbytes(sum(rates)) if rates else None


def fabric_name(ports: list[dict[str, Any]]) -> Optional[str]:
    """`InfiniBand` or `RoCE` after the active ports' link layer (None without active ports)."""
    layers = {p.get("link_layer") for p in ports if p.get("state") == "ACTIVE"}
    if "InfiniBand" in layers:
        return "InfiniBand"
    if "Ethernet" in layers:
        return "RoCE"
    return None
