"""The machine the planner plans for: node shape, peak rates and links, per device.

Built from (highest precedence first) command-line flags, the hardware profile,
the site-config's partition, and the accelerator table of `llmctl.hw.accelerators`
(the one table of datasheet peaks; `llmctl hw probe` writes from it too). The
planner only ever sees this one `Cluster` object, so the cost model never reads files.

A CPU-only profile (what `hw probe` writes on a node without GPUs: `gpu.count = 0`)
is planned as one device per node, or `--gpus-per-node` CPU ranks sharing the
node: each gets its share of the node's FLOP/s (measured fp32 matmul, else the
probe's estimate) and of the host memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

from llmctl.errors import ConfigError, LlmctlError

# The bus bandwidth a tensor-parallel collective reaches in training, as a fraction of
# the datasheet NVLink rate. A100 is calibrated on Narayanan et al. 2021 Table 1
# (Megatron 2021, no NVLS): 150 of 300 GB/s; Hopper on the Megatron-Core 2024 table.
TP_BUS_EFFICIENCY = {"A100": 0.5}


def lookup_accelerator(name: str) -> Optional[tuple[float, float, float, Optional[float]]]:
    """(bf16 peak TFLOP/s, memory GB, HBM GB/s, effective intra-node GB/s) for an NVML name.

    None when the GPU is not in the table (the planner then asks for --peak-tflops).
    """
    from llmctl.hw.accelerators import lookup

    spec = lookup(name)
    if spec is None:
        return None
    intra = spec.nvlink_bw_gbps
    if intra is not None:
        intra *= next((f for k, f in TP_BUS_EFFICIENCY.items() if spec.name.startswith(k)), 1.0)
    return spec.training_tflops, spec.memory_gb, spec.memory_bw_gbps, intra


@dataclass(frozen=True)
class Cluster:
    """Per-device rates of an allocation of identical nodes (bytes, seconds, FLOP/s)."""

    nodes: int
    gpus_per_node: int
    memory_gb: float
    """Memory the plan may use per device (device memory, or --max-memory-gb)."""
    peak_flops: float
    """Dense peak FLOP/s of one device in the training precision."""
    sustained: float
    """Fraction of peak a large matmul sustains (measured, or the calibrated default)."""
    hbm_bw: float
    """Device-memory bandwidth per device, bytes/s."""
    intra_bw: float
    """Intra-node bandwidth per device, bytes/s one direction."""
    inter_bw: float
    """Inter-node bandwidth per device (node NIC bandwidth / devices per node), bytes/s."""
    latency_s: float = 5e-6
    """Per-hop latency of a collective step (NCCL ring step, order of microseconds)."""
    gpu_name: str = "GPU"

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def with_nodes(self, nodes: int) -> "Cluster":
        return replace(self, nodes=nodes)

    def with_memory(self, memory_gb: float) -> "Cluster":
        return replace(self, memory_gb=memory_gb)


# Calibrated on ../shared/planner/calibration.csv (docs/planner.md, "Calibration"):
# the fraction of datasheet peak a transformer GEMM sustains in training.
DEFAULT_SUSTAINED = 0.69
PCIE_BW = 32e9  # PCIe 4.0 x16, one direction: the intra-node link when nothing better is known
ETHERNET_BW = 12.5e9  # 100 Gb/s Ethernet per node
HBM_DEFAULT = 2e12  # only the optimizer step reads it; an A100-class figure when unknown
HOST_MEMORY_BW = 50e9  # a CPU node's DRAM bandwidth when not measured (a few DDR channels)


def build_cluster(profile: Any = None, site: Any = None, *, nodes: Optional[int] = None,
                  gpus_per_node: Optional[int] = None, max_memory_gb: Optional[float] = None,
                  peak_tflops: Optional[float] = None, target_flops: Optional[float] = None,
                  max_comm_bw_gbps: Optional[float] = None, profile_path: str = "hardware profile") -> Cluster:
    """Merge flags > hardware profile > site partition > accelerator table into a Cluster."""
    name = "GPU"
    g = mem = peak = hbm = intra = inter = None
    sustained = DEFAULT_SUSTAINED
    unknown_gpu = None
    if site is not None:
        part = site.partitions.get(site.default_partition) if site.default_partition else None
        part = part or next(iter(site.partitions.values()), None)
        if part is not None and part.gpus_per_node:
            g = part.gpus_per_node
            if part.gpu_model:
                name = part.gpu_model
                row = lookup_accelerator(part.gpu_model)
                if row:
                    peak, mem, hbm = row[0] * 1e12, row[1], row[2] * 1e9
                    intra = row[3] * 1e9 if row[3] else None
                else:
                    unknown_gpu = part.gpu_model
        if site.network.inter_node_bw_gbps and g:
            inter = site.network.inter_node_bw_gbps * 1e9 / g
    if profile is not None and profile.gpu.count == 0:
        g, name, mem, peak, hbm, intra, inter, sustained = _cpu_node(profile, gpus_per_node)
        unknown_gpu = None
    elif profile is not None:
        g = profile.gpu.count
        lim = profile.limits
        if profile.gpu.devices:
            dev = profile.gpu.devices[0]
            name, mem = dev.name, dev.memory_gb
            row = lookup_accelerator(dev.name)
            unknown_gpu = None if row else dev.name
            if row and row[3] and intra is None:
                intra = row[3] * 1e9
            if row and not lim.estimated_flops:
                peak = row[0] * 1e12
        if lim.estimated_flops:
            peak, unknown_gpu = lim.estimated_flops / g, None
        if lim.memory_bw_gbps:
            hbm = lim.memory_bw_gbps * 1e9 / g
        if lim.inter_node_bw_gbps:
            inter = lim.inter_node_bw_gbps * 1e9 / g
        if lim.intra_node_bw_gbps:
            intra = lim.intra_node_bw_gbps * 1e9
        measured = profile.measured.get("matmul_tflops_bf16")
        if measured and peak:
            # a measured large-GEMM rate is what "sustained" means; keep it below peak
            sustained = min(1.0, measured * 1e12 / peak)
    g = gpus_per_node or g
    if peak_tflops:
        peak = peak_tflops * 1e12
    elif unknown_gpu:
        raise ConfigError(profile_path if profile is not None else "site-config",
                          [f"limits.estimated_flops: GPU {unknown_gpu!r} is not in llmctl's accelerator "
                           "table, so its peak FLOP/s is unknown"],
                          hint="pass --peak-tflops (dense bf16 TFLOP/s of one GPU, from its datasheet), "
                               "or run `llmctl hw benchmark` to measure it")
    if target_flops:
        # the seed's ceiling: the whole allocation may assume at most this many FLOP/s
        n = (nodes or 1) * (g or 1)
        peak = min(peak or float("inf"), target_flops / n / sustained)
    missing = [k for k, v in (("GPUs per node", g), ("GPU memory", mem or max_memory_gb),
                              ("peak FLOP/s", peak)) if not v]
    if missing:
        raise LlmctlError(
            f"cannot plan: the node shape lacks {', '.join(missing)}",
            hint="pass --hardware (a profile from `llmctl hw probe`), or --site with a gpu_model, "
                 "or --gpus-per-node / --max-memory-gb / --peak-tflops")
    mem_limit = min(mem, max_memory_gb) if (mem and max_memory_gb) else (max_memory_gb or mem)
    hbm = hbm or HBM_DEFAULT
    intra = intra or PCIE_BW
    inter = inter or ETHERNET_BW / g
    if max_comm_bw_gbps:  # the seed's ceiling: no link may be assumed faster than this
        intra, inter = min(intra, max_comm_bw_gbps * 1e9), min(inter, max_comm_bw_gbps * 1e9)
    return Cluster(nodes=nodes or 1, gpus_per_node=g, memory_gb=float(mem_limit), peak_flops=float(peak),
                   sustained=sustained, hbm_bw=hbm, intra_bw=intra, inter_bw=inter, gpu_name=name)


def _cpu_node(profile: Any, ranks: Optional[int]):
    """A CPU-only node as `ranks` devices (default 1) that share its FLOP/s and host memory."""
    g = ranks or 1
    lim = profile.limits
    measured = profile.measured.get("matmul_tflops_fp32") or profile.measured.get("matmul_tflops_bf16")
    # a measured matmul is already a sustained rate; the probe's ISA estimate is a peak
    node_flops, sustained = (measured * 1e12, 1.0) if measured else (lim.estimated_flops, DEFAULT_SUSTAINED)
    mem = profile.node.memory_gb
    bw = profile.node_memory_bw_gbps()
    # ranks on one host exchange tensors through shared memory: DRAM speed, not a NIC
    host_bw = (bw * 1e9 if bw else HOST_MEMORY_BW)
    inter = lim.inter_node_bw_gbps * 1e9 / g if lim.inter_node_bw_gbps else None
    return (g, profile.node.cpu_model or "CPU", mem / g if mem else None,
            node_flops / g if node_flops else None, host_bw / g, host_bw / g, inter, sustained)
