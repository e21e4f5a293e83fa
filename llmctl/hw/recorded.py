"""The recorded-NVML stand-in: replays readings taken on a real node through pynvml's interface.

`RecordedNvml(path)` loads a `pynvml.json` (the format `llmctl.hw.nvml` writes as
its raw readings; `../shared/fixtures/hw/h100-x1/pynvml.json` was recorded on a
real H100 node) and answers the same calls `llmctl.hw.nvml.read` makes. A reading
recorded as `ERR NVMLError_<Kind>: ...` raises that very pynvml exception; a
reading that was never recorded raises NotSupported, as NVML does for a query the
GPU does not answer. It exists for tests and for replaying a node elsewhere
(`LLMCTL_NVML_REPLAY=path`); it fakes nothing the recording does not hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

_MISSING = object()


class RecordedNvml:
    """A pynvml look-alike whose answers come from a recording (device handles are indices)."""

    NVMLError = pynvml.NVMLError
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
    NVML_FEATURE_ENABLED = pynvml.NVML_FEATURE_ENABLED
    NVML_P2P_CAPS_INDEX_NVLINK = pynvml.NVML_P2P_CAPS_INDEX_NVLINK
    NVML_P2P_STATUS_OK = pynvml.NVML_P2P_STATUS_OK
    NVML_NVLINK_MAX_LINKS = pynvml.NVML_NVLINK_MAX_LINKS

    def __init__(self, recording: str | Path | dict[str, Any]):
        if isinstance(recording, dict):
            self.data = recording
        else:
            self.data = json.loads(Path(recording).read_text(encoding="utf-8"))
        self.started = False

    # --- replay helpers ---------------------------------------------------------
    @staticmethod
    def _answer(value: Any) -> Any:
        if value is _MISSING or value is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if isinstance(value, str) and value.startswith("ERR "):
            kind = value[4:].split(":", 1)[0].strip()
            cls = getattr(pynvml, kind, None)
            if isinstance(cls, type) and issubclass(cls, pynvml.NVMLError):
                raise cls()
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return value

    def _need_init(self) -> None:
        if not self.started:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _dev(self, handle: int, key: str) -> Any:
        self._need_init()
        return self._answer(self.data["devices"][handle].get(key, _MISSING))

    def _link(self, handle: int, link: int, key: str) -> Any:
        self._need_init()
        links = self.data["devices"][handle].get("nvlink", [])
        if link >= len(links):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._answer(links[link].get(key, _MISSING))

    def _pair(self, a: int, b: int, key: str) -> Any:
        self._need_init()
        row = self.data["devices"][a].get(key)
        return self._answer(row[b] if row else _MISSING)

    # --- the pynvml calls llmctl.hw.nvml makes -------------------------------------
    def nvmlInit(self) -> None:
        if "init_error" in self.data:
            self._answer(self.data["init_error"])
        self.started = True

    def nvmlShutdown(self) -> None:
        self.started = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._need_init()
        return self._answer(self.data.get("driver", _MISSING))

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._need_init()
        return self._answer(self.data.get("nvml", _MISSING))

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._need_init()
        return self._answer(self.data.get("cuda_driver", _MISSING))

    def nvmlDeviceGetCount(self) -> int:
        self._need_init()
        return self._answer(self.data.get("count", len(self.data.get("devices", []))))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._need_init()
        if not 0 <= index < len(self.data["devices"]):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._dev(h, "name")

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._dev(h, "uuid")

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        total = self._dev(h, "memory_total")
        free = self.data["devices"][h].get("memory_free", total)
        return SimpleNamespace(total=total, free=free, used=total - free)

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=self._dev(h, "pci_bus_id"))

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return tuple(self._dev(h, "cc"))

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: int) -> int:
        return self._dev(h, "pcie_gen_max")

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: int) -> int:
        return self._dev(h, "pcie_width_max")

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return self._dev(h, "power_limit_mw")

    def nvmlDeviceGetMaxClockInfo(self, h: int, clock: int) -> int:
        return self._dev(h, "clock_max_sm" if clock == pynvml.NVML_CLOCK_SM else "clock_max_mem")

    def nvmlDeviceGetMigMode(self, h: int) -> list[int]:
        return list(self._dev(h, "mig_mode"))

    def nvmlDeviceGetNumaNodeId(self, h: int) -> int:
        return self._dev(h, "numa")

    def nvmlDeviceGetCpuAffinity(self, h: int, words: int) -> list[int]:
        return list(self._dev(h, "cpu_affinity"))

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        return self._link(h, link, "state")

    def nvmlDeviceGetNvLinkVersion(self, h: int, link: int) -> int:
        return self._link(h, link, "version")

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: int, link: int) -> Any:
        return SimpleNamespace(busId=self._link(h, link, "remote_pci"))

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: int, link: int) -> int:
        return self._link(h, link, "remote_type")

    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        return self._pair(a, b, "topology")

    def nvmlDeviceGetP2PStatus(self, a: int, b: int, index: int) -> int:
        return self._pair(a, b, "p2p_nvlink")
