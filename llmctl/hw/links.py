"""Bandwidth of the links a GPU node is built from: PCIe, NVLink, InfiniBand.

All figures are GB/s (10^9 bytes) in one direction, the unit `[limits]` uses.
"""

from __future__ import annotations

from typing import Optional

# GB/s per lane, one direction, after line encoding (PCI-SIG base specs: gen1/2
# use 8b/10b, gen3-5 128b/130b; gen6 is PAM4 with FLIT mode, ~242/256 efficiency).
PCIE_GBPS_PER_LANE = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}

# GB/s per link, one direction, by NVLink version (NVIDIA's NVLink pages: NVLink 1
# 20 GB/s, NVLink 2-4 25 GB/s, NVLink 5 50 GB/s per link per direction).
NVLINK_GBPS_PER_LINK = {"1.0": 20.0, "2.0": 25.0, "2.2": 25.0, "3.0": 25.0, "3.1": 25.0,
                        "4.0": 25.0, "5.0": 50.0, "6.0": 100.0}


def pcie_gbps(gen: Optional[int], width: Optional[int]) -> Optional[float]:
    """One-direction bandwidth of a PCIe link, or None if generation/width are unknown."""
    if not gen or not width or gen not in PCIE_GBPS_PER_LANE:
        return None
    return round(PCIE_GBPS_PER_LANE[gen] * width, 1)


def nvlink_gbps(versions: list[Optional[str]]) -> Optional[float]:
    """One-direction bandwidth of a GPU's active NVLink links (None without any)."""
    total = sum(NVLINK_GBPS_PER_LINK.get(v or "", 25.0) for v in versions)
    return float(total) if versions else None


def ib_rate_to_gbytes(rate_gbits: Optional[float]) -> Optional[float]:
    """InfiniBand signalling rate in Gb/s (e.g. 400 for NDR) to GB/s, one direction."""
    return None if rate_gbits is None else round(rate_gbits / 8.0, 2)
