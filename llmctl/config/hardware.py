"""Hardware profile: what one node (and, with `[cluster]`, the whole allocation) offers.

Keeps the seed's layout — `[gpu] count`, `[[gpu.devices]]`, `[interconnect]`,
`[limits] estimated_flops, memory_bw_gbps` — and adds the sections the probe and
the benchmarks fill: `[node]` (CPU, memory), `[cluster]` and `[measured]`. The
planner prefers `[measured]` numbers over datasheet `[limits]` when both exist.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from llmctl.config.base import StrictModel


class GpuDevice(StrictModel):
    """One GPU on the node."""

    id: int = Field(ge=0)
    """Device index as CUDA numbers it."""
    name: str
    """Marketing name as NVML reports it, e.g. `NVIDIA A100-SXM4-80GB`."""
    memory_gb: float = Field(gt=0)
    """Total device memory in GB (10^9 bytes)."""
    uuid: Optional[str] = None
    """NVML UUID."""
    pci_bus_id: Optional[str] = None
    """PCI bus id, e.g. `00000000:1B:00.0`."""
    compute_capability: Optional[str] = None
    """CUDA compute capability, e.g. `9.0`."""


class GpuSection(StrictModel):
    """GPUs per node."""

    count: int = Field(0, ge=0)
    """Number of GPUs on one node (0 for a CPU-only node)."""
    devices: list[GpuDevice] = []
    """One entry per GPU."""

    @model_validator(mode="after")
    def _check(self) -> "GpuSection":
        if self.devices and len(self.devices) not in (1, self.count):
            raise ValueError(
                f"count is {self.count} but {len(self.devices)} devices are listed "
                "(list one device to stand for all, or every device)")
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError(f"device ids repeat: {ids}")
        return self


class Interconnect(StrictModel):
    """How GPUs talk inside a node and between nodes."""

    intra_node: str = "PCIe"
    """Intra-node link, e.g. `NVLink`, `PCIe`, `none`."""
    inter_node: str = "Ethernet"
    """Inter-node network, e.g. `InfiniBand`, `RoCE`, `Ethernet`, `none`."""


class Limits(StrictModel):
    """Peak rates of one node (from the datasheet table, or measured)."""

    estimated_flops: float = Field(gt=0)
    """Peak dense FLOP/s of the whole node in the training precision (bf16 on GPUs)."""
    memory_bw_gbps: float = Field(gt=0)
    """Aggregate device-memory bandwidth of the node in GB/s."""
    intra_node_bw_gbps: Optional[float] = Field(None, gt=0)
    """Per-GPU intra-node bandwidth in GB/s (one direction), e.g. NVLink."""
    inter_node_bw_gbps: Optional[float] = Field(None, gt=0)
    """Per-node inter-node bandwidth in GB/s (one direction)."""


class NodeInfo(StrictModel):
    """Host facts."""

    hostname: Optional[str] = None
    """Host the profile was taken on."""
    cpu_model: Optional[str] = None
    """CPU model name."""
    cpus: Optional[int] = Field(None, gt=0)
    """Logical CPUs."""
    sockets: Optional[int] = Field(None, gt=0)
    """CPU sockets."""
    numa_nodes: Optional[int] = Field(None, gt=0)
    """NUMA nodes."""
    memory_gb: Optional[float] = Field(None, gt=0)
    """Host memory in GB."""


class ClusterInfo(StrictModel):
    """The allocation the profile describes, when more than one node."""

    nodes: int = Field(1, gt=0)
    """Number of identical nodes."""
    site: Optional[str] = None
    """Site-config the node shape came from."""
    partition: Optional[str] = None
    """Partition the node shape came from."""


class HardwareProfile(StrictModel):
    """A hardware profile (TOML or JSON)."""

    gpu: GpuSection = GpuSection()
    """GPUs on one node."""
    interconnect: Interconnect = Interconnect()
    """Links between GPUs and nodes."""
    limits: Limits
    """Peak rates of one node."""
    node: NodeInfo = NodeInfo()
    """Host facts (CPU, memory)."""
    cluster: ClusterInfo = ClusterInfo()
    """How many such nodes the profile stands for."""
    measured: dict[str, float] = {}
    """Micro-benchmark results (e.g. `matmul_tflops_bf16`), preferred by the planner."""
    notes: list[str] = []
    """Free-text notes (e.g. why the profile is CPU-only)."""
