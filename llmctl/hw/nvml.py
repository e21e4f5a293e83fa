"""GPUs through NVML (nvidia-ml-py): devices, NVLink links and the GPU×GPU link matrix.

`read(lib)` talks to an NVML-like module: the real `pynvml`, or the recorded
stand-in in `llmctl.hw.recorded`, which replays what this reader once read on a
real node. Besides the parsed result it returns its raw readings in the very
format the stand-in replays (`pynvml.json`), so `hw probe --verbose` on a new
node records a fixture for free.

A reading that NVML refuses (NotSupported on a VM, NoPermission, ...) becomes an
absent field, never a crash: the probe must work on every node it meets.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

# nvmlNvlinkVersion_t (nvml.h): what nvmlDeviceGetNvLinkVersion returns.
NVLINK_VERSIONS = {1: "1.0", 2: "2.0", 3: "2.2", 4: "3.0", 5: "3.1", 6: "4.0", 7: "5.0", 8: "6.0"}
# nvmlIntNvLinkDeviceType_t: what is at the other end of a link.
PEER_TYPES = {0: "gpu", 1: "npu", 2: "switch"}
# nvmlGpuTopologyLevel_t -> nvidia-smi topo -m notation.
TOPOLOGY_LEVELS = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
_MAX_LINKS_FALLBACK = 18


class NvmlUnavailable(Exception):
    """NVML cannot be used here (no nvidia-ml-py, no driver, no GPU): a CPU-only node."""


def read(lib: Any = None) -> dict[str, Any]:
    """Read every GPU through `lib` (default: the real pynvml).

    Returns {"driver", "nvml", "cuda_driver", "devices": [...], "topology": [[...]],
    "raw": {...}}; raises NvmlUnavailable when NVML cannot start.
    """
    if lib is None:
        try:
            import pynvml as lib
        except ImportError as e:
            raise NvmlUnavailable("nvidia-ml-py is not installed") from e
    try:
        lib.nvmlInit()
    except lib.NVMLError as e:
        raise NvmlUnavailable(f"NVML did not start ({e}): no NVIDIA driver or GPU") from e
    try:
        return _Reader(lib).read_all()
    finally:
        try:
            lib.nvmlShutdown()
        except lib.NVMLError:
            pass


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def norm_bus_id(bus: Optional[str]) -> Optional[str]:
    """'00000000:1B:00.0' and '0000:1b:00.0' -> '0000:1b:00.0' (NVML pads the domain to 8)."""
    if not bus:
        return None
    bus = _text(bus).strip().lower()
    parts = bus.split(":")
    if len(parts) == 3:
        try:
            return f"{int(parts[0], 16):04x}:{parts[1]}:{parts[2]}"
        except ValueError:
            return bus
    return bus


def cpu_list(words: list[int]) -> str:
    """NVML's affinity bitmask (64-bit words, CPU 0 in the lowest bit) -> '0-15,32-47'."""
    cpus = [w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1]
    ranges: list[str] = []
    start = prev = None
    for c in cpus + [None]:
        if c is not None and prev is not None and c == prev + 1:
            prev = c
            continue
        if start is not None:
            ranges.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = c
    return ",".join(ranges)


class _Reader:
    """One pass over NVML; `raw` collects every reading (or its error) as it goes."""

    def __init__(self, lib: Any):
        self.lib = lib
        self.raw: dict[str, Any] = {}

    def call(self, fn: Callable, *args: Any) -> tuple[Any, Any]:
        """(value or None, raw value or 'ERR <class>: <message>')."""
        try:
            value = fn(*args)
        except self.lib.NVMLError as e:
            return None, f"ERR {type(e).__name__}: {e}"
        return value, value

    def read_all(self) -> dict[str, Any]:
        lib = self.lib
        driver, self.raw["driver"] = self.call(lib.nvmlSystemGetDriverVersion)
        nvml_v, self.raw["nvml"] = self.call(lib.nvmlSystemGetNVMLVersion)
        cuda, self.raw["cuda_driver"] = self.call(lib.nvmlSystemGetCudaDriverVersion)
        count = lib.nvmlDeviceGetCount()
        self.raw["count"] = count
        handles = [lib.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        devices, raw_devices = [], []
        for i, h in enumerate(handles):
            dev, raw = self.device(i, h)
            devices.append(dev)
            raw_devices.append(raw)
        self.raw["devices"] = raw_devices
        topology = self.topology(handles, devices, raw_devices)
        _resolve_peers(devices)
        return {
            "driver": _text(driver),
            "nvml": _text(nvml_v),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None,
            "devices": devices,
            "topology": topology,
            "raw": self.raw,
        }

    def device(self, index: int, h: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        lib, raw = self.lib, {"index": index}
        name, raw["name"] = self.call(lib.nvmlDeviceGetName, h)
        uuid, raw["uuid"] = self.call(lib.nvmlDeviceGetUUID, h)
        mem, _ = self.call(lib.nvmlDeviceGetMemoryInfo, h)
        raw["memory_total"] = mem.total if mem is not None else "ERR unavailable"
        pci, _ = self.call(lib.nvmlDeviceGetPciInfo, h)
        raw["pci_bus_id"] = _text(pci.busId) if pci is not None else "ERR unavailable"
        cc, raw["cc"] = self.call(lib.nvmlDeviceGetCudaComputeCapability, h)
        gen, raw["pcie_gen_max"] = self.call(lib.nvmlDeviceGetMaxPcieLinkGeneration, h)
        width, raw["pcie_width_max"] = self.call(lib.nvmlDeviceGetMaxPcieLinkWidth, h)
        power, raw["power_limit_mw"] = self.call(lib.nvmlDeviceGetEnforcedPowerLimit, h)
        sm, raw["clock_max_sm"] = self.call(lib.nvmlDeviceGetMaxClockInfo, h, lib.NVML_CLOCK_SM)
        memclk, raw["clock_max_mem"] = self.call(lib.nvmlDeviceGetMaxClockInfo, h, lib.NVML_CLOCK_MEM)
        mig, raw["mig_mode"] = self.call(lib.nvmlDeviceGetMigMode, h)
        numa, raw["numa"] = self.call(lib.nvmlDeviceGetNumaNodeId, h)
        words = max(1, ((os.cpu_count() or 64) + 63) // 64)
        aff, raw_aff = self.call(lib.nvmlDeviceGetCpuAffinity, h, words)
        raw["cpu_affinity"] = list(aff) if aff is not None else raw_aff
        links, raw["nvlink"] = self.nvlinks(h)
        total = mem.total if mem is not None else None
        dev = {
            "id": index,
            "name": _text(name) or "unknown GPU",
            "memory_gb": round(total / 1e9, 2) if total else None,
            "memory_mib": int(total // 2**20) if total else None,
            "uuid": _text(uuid),
            "pci_bus_id": raw["pci_bus_id"] if pci is not None else None,
            "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
            "power_limit_w": power / 1000 if power else None,
            "max_sm_clock_mhz": sm or None,
            "max_mem_clock_mhz": memclk or None,
            "pcie_gen": gen or None,
            "pcie_width": width or None,
            "mig_enabled": bool(mig[0]) if mig else None,
            # NVML answers -1 (or NotSupported) where the GPU has no NUMA node of its own.
            "numa_node": numa if isinstance(numa, int) and numa >= 0 else None,
            "cpu_affinity": cpu_list(list(aff)) if aff is not None else None,
            "nvlinks": links,
        }
        return {k: v for k, v in dev.items() if v is not None}, raw

    def nvlinks(self, h: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        lib = self.lib
        links, raw_links = [], []
        for link in range(getattr(lib, "NVML_NVLINK_MAX_LINKS", _MAX_LINKS_FALLBACK)):
            state, raw_state = self.call(lib.nvmlDeviceGetNvLinkState, h, link)
            if isinstance(raw_state, str) and "InvalidArgument" in raw_state:
                break  # past the GPU's last link
            raw = {"link": link, "state": raw_state}
            raw_links.append(raw)
            if state != lib.NVML_FEATURE_ENABLED:
                continue
            version, raw["version"] = self.call(lib.nvmlDeviceGetNvLinkVersion, h, link)
            pci, _ = self.call(lib.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
            raw["remote_pci"] = _text(pci.busId) if pci is not None else None
            kind, raw["remote_type"] = self.call(lib.nvmlDeviceGetNvLinkRemoteDeviceType, h, link)
            entry = {"link": link, "active": True, "version": NVLINK_VERSIONS.get(version),
                     "peer_type": PEER_TYPES.get(kind, "unknown") if kind is not None else None,
                     "peer_pci_bus_id": raw["remote_pci"]}
            links.append({k: v for k, v in entry.items() if v is not None})
        return links, raw_links

    def topology(self, handles: list[Any], devices: list[dict], raw_devices: list[dict]) -> list[list[str]]:
        """The GPU×GPU matrix as `nvidia-smi topo -m` shows it."""
        lib, n = self.lib, len(handles)
        matrix = [["X"] * n for _ in range(n)]
        for i in range(n):
            levels, p2p = [None] * n, [None] * n
            for j in range(n):
                if i == j:
                    continue
                level, levels[j] = self.call(lib.nvmlDeviceGetTopologyCommonAncestor, handles[i], handles[j])
                status, p2p[j] = self.call(lib.nvmlDeviceGetP2PStatus, handles[i], handles[j],
                                           lib.NVML_P2P_CAPS_INDEX_NVLINK)
                matrix[i][j] = _cell(devices[i], devices[j], level, status == lib.NVML_P2P_STATUS_OK)
            raw_devices[i]["topology"] = levels
            raw_devices[i]["p2p_nvlink"] = p2p
        return matrix


def _cell(a: dict, b: dict, level: Optional[int], p2p_nvlink: bool) -> str:
    """One matrix entry: NV<links> when NVLink joins a and b, else the PCIe level."""
    links = a.get("nvlinks", [])
    direct = [x for x in links if norm_bus_id(x.get("peer_pci_bus_id")) == norm_bus_id(b.get("pci_bus_id"))]
    if direct:
        return f"NV{len(direct)}"
    if p2p_nvlink:
        # Through NVSwitch: every switch-facing link carries traffic to every peer.
        switched = [x for x in links if x.get("peer_type") == "switch"]
        return f"NV{len(switched)}" if switched else "NV"
    return TOPOLOGY_LEVELS.get(level, "?") if level is not None else "?"


def _resolve_peers(devices: list[dict]) -> None:
    """Name the peer GPU of each GPU-to-GPU link by its index on this node."""
    by_bus = {norm_bus_id(d.get("pci_bus_id")): d["id"] for d in devices if d.get("pci_bus_id")}
    for d in devices:
        for link in d.get("nvlinks", []):
            peer = by_bus.get(norm_bus_id(link.get("peer_pci_bus_id")))
            if peer is not None:
                link["peer_id"] = peer
                link.setdefault("peer_type", "gpu")
