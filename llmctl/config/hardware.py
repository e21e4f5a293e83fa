"""Hardware profile: what one node (and, with `[cluster]`, the whole allocation) offers.

Keeps the seed's layout — `[gpu] count`, `[[gpu.devices]] id, name, memory_gb`,
`[interconnect] intra_node, inter_node`, `[limits] estimated_flops, memory_bw_gbps`
— and adds what `llmctl hw probe` reads (per-GPU details, NVLink links, the GPU×GPU
link matrix, `[node]` CPU and memory, `[network]` InfiniBand ports and interfaces,
`[accelerator]` datasheet peaks with their source, `[probe]` provenance), the
`[cluster]` shape, and `[measured]`, which `llmctl hw benchmark` fills and the
planner prefers over the datasheet `[limits]`.

`limits.estimated_flops` is absent when the GPU is not in llmctl's accelerator
table: the planner then asks for `--peak-tflops` rather than guessing.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator, model_validator

from llmctl.config.base import StrictModel, check_name


class NvLink(StrictModel):
    """One NVLink link of a GPU, as NVML reports it."""

    link: int = Field(ge=0)
    """Link index on the GPU."""
    active: bool
    """Whether the link is up."""
    version: Optional[str] = None
    """NVLink version, e.g. `4.0`."""
    peer_type: Optional[str] = None
    """What is at the other end: `gpu`, `switch`, `npu` or `unknown`."""
    peer_id: Optional[int] = None
    """The peer GPU's index on this node, when the peer is a GPU."""
    peer_pci_bus_id: Optional[str] = None
    """PCI bus id at the other end (a GPU or an NVSwitch)."""


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
    memory_mib: Optional[int] = Field(None, gt=0)
    """Total device memory in MiB, as nvidia-smi shows it."""
    power_limit_w: Optional[float] = Field(None, gt=0)
    """Enforced power limit in W."""
    max_sm_clock_mhz: Optional[int] = Field(None, gt=0)
    """Maximum SM clock in MHz."""
    max_mem_clock_mhz: Optional[int] = Field(None, gt=0)
    """Maximum memory clock in MHz."""
    pcie_gen: Optional[int] = Field(None, gt=0)
    """Maximum PCIe link generation."""
    pcie_width: Optional[int] = Field(None, gt=0)
    """Maximum PCIe link width (lanes)."""
    mig_enabled: Optional[bool] = None
    """Whether MIG mode is on (current mode)."""
    numa_node: Optional[int] = None
    """NUMA node the GPU is attached to (absent where NVML does not say)."""
    cpu_affinity: Optional[str] = None
    """CPUs close to the GPU, as a list like `0-15,32-47`."""
    nvlinks: list[NvLink] = []
    """NVLink links (empty: no NVLink)."""


class GpuSection(StrictModel):
    """GPUs per node."""

    count: int = Field(0, ge=0)
    """Number of GPUs on one node (0 for a CPU-only node)."""
    devices: list[GpuDevice] = []
    """One entry per GPU."""
    driver: Optional[str] = None
    """NVIDIA driver version."""
    cuda_driver: Optional[str] = None
    """Highest CUDA version the driver supports, e.g. `13.0`."""
    nvml: Optional[str] = None
    """NVML library version."""
    topology: list[list[str]] = []
    """GPU×GPU link matrix in `nvidia-smi topo -m` notation (`X`, `NV18`, `PIX`, `PXB`, `PHB`, `NODE`, `SYS`)."""

    @model_validator(mode="after")
    def _check(self) -> "GpuSection":
        if self.devices and len(self.devices) not in (1, self.count):
            raise ValueError(
                f"count is {self.count} but {len(self.devices)} devices are listed "
                "(list one device to stand for all, or every device)")
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError(f"device ids repeat: {ids}")
        if self.topology:
            n = len(self.topology)
            if n != self.count or any(len(row) != n for row in self.topology):
                raise ValueError(f"topology must be a {self.count}x{self.count} matrix")
        return self


class Interconnect(StrictModel):
    """How GPUs talk inside a node and between nodes."""

    intra_node: str = "PCIe"
    """Intra-node link, e.g. `NVLink`, `PCIe`, `none`."""
    inter_node: str = "Ethernet"
    """Inter-node network, e.g. `InfiniBand`, `RoCE`, `Ethernet`, `none`."""


class Limits(StrictModel):
    """Peak rates of one node (from the datasheet table, or an estimate for CPUs)."""

    estimated_flops: Optional[float] = Field(None, gt=0)
    """Peak dense FLOP/s of the whole node in the training precision (bf16 on GPUs); absent for an unknown GPU."""
    memory_bw_gbps: Optional[float] = Field(None, gt=0)
    """Device-memory bandwidth per node in GB/s (gigabytes per second, not gigabits): GPUs × each GPU's HBM bandwidth."""
    intra_node_bw_gbps: Optional[float] = Field(None, gt=0)
    """Intra-node link rate per GPU in GB/s (gigabytes per second, not gigabits), one direction: all its NVLink links together (A100 300, H100 450), else its PCIe link (gen × width). A link rate, not a collective's bus bandwidth (the planner derives that; `measured.allgather_busbw_gbps` replaces it)."""
    inter_node_bw_gbps: Optional[float] = Field(None, gt=0)
    """Network link rate per node in GB/s (gigabytes per second, not gigabits), one direction: the sum of its InfiniBand/RoCE ports (8 × HDR200, 200 Gb/s each, = 200 GB/s); each GPU gets its share. A site-config's `network.inter_node_bw_gbps` means the same."""
    source: Optional[str] = None
    """Where the numbers come from: `datasheet`, `estimate` (CPU), `site` or `unknown`."""


class Accelerator(StrictModel):
    """The GPU model as looked up in llmctl's accelerator table (per GPU)."""

    known: bool
    """Whether the GPU is in the table; if not, the planner asks for `--peak-tflops`."""
    name: str
    """Table entry (e.g. `H100 SXM5 80GB`) or the unknown GPU's NVML name."""
    bf16_tflops: Optional[float] = None
    """Peak dense bf16 tensor TFLOP/s."""
    fp16_tflops: Optional[float] = None
    """Peak dense fp16 tensor TFLOP/s."""
    fp8_tflops: Optional[float] = None
    """Peak dense fp8 tensor TFLOP/s (absent before Hopper/Ada)."""
    tf32_tflops: Optional[float] = None
    """Peak dense tf32 tensor TFLOP/s."""
    fp32_tflops: Optional[float] = None
    """Peak fp32 (non-tensor) TFLOP/s."""
    memory_bw_gbps: Optional[float] = None
    """Device-memory bandwidth per GPU in GB/s (gigabytes per second, not gigabits)."""
    nvlink_bw_gbps: Optional[float] = None
    """NVLink bandwidth per GPU in GB/s (gigabytes per second, not gigabits), one direction: H100's "900 GB/s" is 450 (absent: no NVLink)."""
    source: Optional[str] = None
    """Datasheet the numbers come from."""


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
    cores_per_socket: Optional[int] = Field(None, gt=0)
    """Physical cores per socket."""
    threads_per_core: Optional[int] = Field(None, gt=0)
    """Hardware threads per core."""
    numa_nodes: Optional[int] = Field(None, gt=0)
    """NUMA nodes."""
    memory_gb: Optional[float] = Field(None, gt=0)
    """Host memory in GB."""
    cpu_flags: list[str] = []
    """Vector-ISA flags that matter for CPU matmul (avx2, avx512f, amx_bf16, ...)."""


class IbPort(StrictModel):
    """One InfiniBand/RoCE port from /sys/class/infiniband."""

    device: str
    """HCA name, e.g. `mlx5_0`."""
    port: int = Field(ge=1)
    """Port number."""
    rate_gbps: Optional[float] = None
    """Signalling rate of the port in Gb/s (gigabits per second, as the port reports it; ÷ 8 for GB/s), e.g. 400 for NDR: unlike the `*_bw_gbps` keys, bits."""
    state: Optional[str] = None
    """Logical state, e.g. `ACTIVE`."""
    link_layer: Optional[str] = None
    """`InfiniBand` or `Ethernet` (RoCE)."""
    numa_node: Optional[int] = None
    """NUMA node of the HCA (absent if unknown)."""


class NetInterface(StrictModel):
    """One network interface from /sys/class/net."""

    name: str
    """Interface name, e.g. `eth0`, `ib0`."""
    state: Optional[str] = None
    """Operational state, e.g. `up`."""
    speed_mbps: Optional[int] = None
    """Link speed in Mb/s (absent where the driver does not say)."""
    mtu: Optional[int] = None
    """MTU in bytes."""
    kind: Optional[str] = None
    """`ether`, `infiniband`, `loopback` or the ARPHRD number."""


class Network(StrictModel):
    """Network hardware of the node."""

    infiniband: list[IbPort] = []
    """InfiniBand/RoCE ports."""
    interfaces: list[NetInterface] = []
    """Network interfaces."""


class ClusterInfo(StrictModel):
    """The allocation the profile describes, when more than one node."""

    nodes: int = Field(1, gt=0)
    """Number of identical nodes."""
    site: Optional[str] = None
    """Site-config the node shape came from."""
    partition: Optional[str] = None
    """Partition the node shape came from."""
    hostnames: list[str] = []
    """Nodes probed with `--all-nodes`."""

    @field_validator("site")
    @classmethod
    def _site(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else check_name(v)


class ProbeInfo(StrictModel):
    """Provenance: when and with what the profile was taken."""

    timestamp: Optional[str] = None
    """UTC time of the probe (ISO 8601)."""
    gpu_source: Optional[str] = None
    """Where the GPU facts came from: `nvml`, `nvidia-smi`, `site` or `none`."""
    tools: dict[str, str] = {}
    """Versions of llmctl, Python, nvidia-ml-py, the driver, lscpu, ..."""
    raw_dir: Optional[str] = None
    """Folder with the raw tool outputs (`--verbose`)."""


class HardwareProfile(StrictModel):
    """A hardware profile (TOML or JSON)."""

    gpu: GpuSection = GpuSection()
    """GPUs on one node."""
    interconnect: Interconnect = Interconnect()
    """Links between GPUs and nodes."""
    limits: Limits = Limits()
    """Peak rates of one node."""
    accelerator: Optional[Accelerator] = None
    """Datasheet peaks of the node's GPU model (absent on a CPU-only node)."""
    node: NodeInfo = NodeInfo()
    """Host facts (CPU, memory)."""
    network: Network = Network()
    """InfiniBand ports and network interfaces."""
    cluster: ClusterInfo = ClusterInfo()
    """How many such nodes the profile stands for."""
    measured: dict[str, float] = {}
    """Micro-benchmark results (e.g. `matmul_tflops_bf16`; in GB/s: `memory_bw_gbps` per GPU, `allgather_busbw_gbps` the bus bandwidth of collectives among the node's GPUs), preferred by the planner over `[limits]`."""
    probe: ProbeInfo = ProbeInfo()
    """When and how the profile was taken."""
    notes: list[str] = []
    """Free-text notes (e.g. why the profile is CPU-only)."""

    def node_flops(self) -> Optional[float]:
        """Peak FLOP/s of one node: measured matmul × GPUs if present, else `[limits]`.

        GPUs train in bf16; a CPU-only node trains in fp32, where bf16 is often slower.
        """
        keys = ("matmul_tflops_bf16", "matmul_tflops_fp32")
        for key in keys if self.gpu.count else keys[::-1]:
            if key in self.measured:
                return self.measured[key] * 1e12 * max(self.gpu.count, 1)
        return self.limits.estimated_flops

    def node_memory_bw_gbps(self) -> Optional[float]:
        """Device-memory bandwidth of one node: measured if present, else `[limits]`."""
        if "memory_bw_gbps" in self.measured:
            return self.measured["memory_bw_gbps"] * max(self.gpu.count, 1)
        return self.limits.memory_bw_gbps
