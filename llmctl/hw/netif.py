"""Network interfaces from /sys/class/net: state, speed, MTU, kind.

What NCCL_SOCKET_IFNAME and the bootstrap network will use; `root` lets a test
point it at a folder laid out like sysfs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

SYSFS = "/sys/class/net"
# ARPHRD_* from <linux/if_arp.h>
KINDS = {"1": "ether", "32": "infiniband", "772": "loopback"}


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:  # `speed` raises EINVAL on a link that is down
        return None


def read_interfaces(root: str | Path = SYSFS) -> list[dict[str, Any]]:
    """One entry per interface, loopback left out."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        kind = _read(d / "type")
        if kind == "772":
            continue
        speed, mtu = _read(d / "speed"), _read(d / "mtu")
        entry = {
            "name": d.name,
            "state": _read(d / "operstate"),
            # -1 (or a huge value) means the driver does not know the speed.
            "speed_mbps": int(speed) if speed and speed.isdigit() and 0 < int(speed) < 10**7 else None,
            "mtu": int(mtu) if mtu and mtu.isdigit() else None,
            "kind": KINDS.get(kind or "", kind),
        }
        out.append({k: v for k, v in entry.items() if v is not None})
    return out
