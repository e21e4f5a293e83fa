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

# What each bandwidth means (docs/hardware.md, "Bandwidths"): a profile, a site-config and the
# accelerator table all give *link* rates: per GPU, per direction, as the datasheet or the link
# itself reports them (NVLink, PCIe), and per node for the network. The cost model's ring
# collectives need *bus* bandwidth in nccl-tests' sense (time = (n-1)/n * bytes / busbw). For the
# intra-node link that is, in order: a measured all-gather (or all-reduce) bus bandwidth from
# `llmctl hw benchmark` ([measured] allgather_busbw_gbps), else the link rate times the fraction
# of it a tensor-parallel collective reaches in training. A100 is calibrated on Narayanan et al.
# 2021 Table 1 (Megatron 2021, no NVLS): 0.43 of 300 GB/s; Hopper on the Megatron-Core 2024 table.
# Every path to a Cluster (site-config, `hw probe`, `hw probe --site`, a scaffolded or hand-written
# profile) applies this one rule, so the same machine gives the same plan whichever describes it.
TP_BUS_EFFICIENCY = {"A100": 0.43}


def nvlink_bus_efficiency(gpu_name: str) -> float:
    """The fraction of the NVLink link rate a tensor-parallel collective reaches (1 when unknown)."""
    from llmctl.hw.accelerators import lookup

    spec = lookup(gpu_name)
    name = spec.name if spec else gpu_name
    return next((f for k, f in TP_BUS_EFFICIENCY.items() if name.startswith(k)), 1.0)


def lookup_accelerator(name: str) -> Optional[tuple[float, float, float, Optional[float]]]:
    """(bf16 peak TFLOP/s, memory GB, HBM GB/s, intra-node bus GB/s in training) for an NVML name.

    None when the GPU is not in the table (the planner then asks for --peak-tflops).
    """
    from llmctl.hw.accelerators import lookup

    spec = lookup(name)
    if spec is None:
        return None
    intra = spec.nvlink_bw_gbps
    if intra is not None:
        intra *= nvlink_bus_efficiency(spec.name)
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
    latency_s: float = 6e-6
    """Per-step latency of a ring collective: NCCL's own tuning model (src/graph/tuning.cc, hwLat for the
    ring with the Simple protocol large messages use) charges 5.7 us per NVLink step and 6.6 us per
    network step (not fitted: the fit set hardly constrains it; docs/planner.md)."""
    gpu_name: str = "GPU"
    fp8_flops: float = 0.0
    device: str = "gpu"
    """'gpu', or 'cpu' for a CPU-only profile (its 'GPUs' are processes sharing the cores)."""
    """Dense peak FP8 FLOP/s of one device (0: none, e.g. A100), for --precision fp8."""

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def with_nodes(self, nodes: int) -> "Cluster":
        return replace(self, nodes=nodes)

    def with_memory(self, memory_gb: float) -> "Cluster":
        return replace(self, memory_gb=memory_gb)


# Calibrated on the fit set (docs/planner.md, "Calibration"): the fraction of datasheet peak a
# transformer GEMM sustains in training, per GPU generation where the fit set has runs of it (A100:
# Narayanan et al. 2021, DeepSpeed ZeRO-3 rows; H100: Megatron-Core 2024), DEFAULT_SUSTAINED otherwise.
# A measured matmul rate (`hw benchmark`) replaces it.
DEFAULT_SUSTAINED = 0.69
SUSTAINED_BY_GPU = {"A100": 0.79, "H100": 0.59}


def sustained_fraction(gpu_name: str) -> float:
    """The calibrated sustained fraction of peak for this GPU (DEFAULT_SUSTAINED when not fitted)."""
    from llmctl.hw.accelerators import lookup

    spec = lookup(gpu_name)
    name = spec.name if spec else gpu_name
    return next((f for k, f in SUSTAINED_BY_GPU.items() if name.startswith(k)), DEFAULT_SUSTAINED)
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
    link = None  # intra-node link rate per GPU per direction, GB/s (NVLink, or PCIe)
    nvlink = False
    sustained = None  # measured, or the calibrated fraction of the GPU's peak below
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
                    from llmctl.hw.accelerators import lookup

                    peak, mem, hbm = row[0] * 1e12, row[1], row[2] * 1e9
                    spec = lookup(part.gpu_model)
                    # as `hw probe --site` writes it: NVLink unless the site says otherwise
                    kind = site.network.intra_node or ("NVLink" if spec.nvlink_bw_gbps else "PCIe")
                    if kind == "NVLink" and spec.nvlink_bw_gbps:
                        link, nvlink = spec.nvlink_bw_gbps, True
                else:
                    unknown_gpu = part.gpu_model
        if site.network.inter_node_bw_gbps and g:
            inter = site.network.inter_node_bw_gbps * 1e9 / g
    device = "gpu"
    if profile is not None and profile.gpu.count == 0:
        g, name, mem, peak, hbm, intra, inter, sustained = _cpu_node(profile, gpus_per_node)
        unknown_gpu, device = None, "cpu"
    elif profile is not None:
        g = profile.gpu.count
        lim = profile.limits
        spec = None
        if profile.gpu.devices:
            from llmctl.hw.accelerators import lookup

            dev = profile.gpu.devices[0]
            name, mem = dev.name, dev.memory_gb
            row = lookup_accelerator(dev.name)
            spec = lookup(dev.name)
            unknown_gpu = None if row else dev.name
            if row and not lim.estimated_flops:
                peak = row[0] * 1e12
        # the intra-node link: NVLink unless the profile says otherwise
        said = "intra_node" in profile.interconnect.model_fields_set
        kind = profile.interconnect.intra_node if said else (
            "NVLink" if spec is not None and spec.nvlink_bw_gbps else "PCIe")
        if lim.intra_node_bw_gbps:
            link, nvlink = lim.intra_node_bw_gbps, kind == "NVLink"
        elif kind == "NVLink" and spec is not None and spec.nvlink_bw_gbps:
            link, nvlink = spec.nvlink_bw_gbps, True
        if lim.estimated_flops:
            peak, unknown_gpu = lim.estimated_flops / g, None
        hbm_node = profile.node_memory_bw_gbps()  # measured, else [limits]
        if hbm_node:
            hbm = hbm_node * 1e9 / g
        if lim.inter_node_bw_gbps:
            inter = lim.inter_node_bw_gbps * 1e9 / g
        bus = profile.measured.get("allgather_busbw_gbps") or profile.measured.get("allreduce_busbw_gbps")
        if bus:
            intra = bus * 1e9  # measured among this node's GPUs: already a bus bandwidth
        measured = profile.measured.get("matmul_tflops_bf16")
        if measured and peak:
            # a measured large-GEMM rate is what "sustained" means; keep it below peak
            sustained = min(1.0, measured * 1e12 / peak)
    if sustained is None:
        sustained = sustained_fraction(name)
    if intra is None and link:
        intra = link * 1e9 * (nvlink_bus_efficiency(name) if nvlink else 1.0)
    from llmctl.hw.accelerators import lookup as _lookup

    spec8 = _lookup(name) if name not in ("GPU",) else None
    fp8 = spec8.fp8_tflops * 1e12 if spec8 is not None and spec8.fp8_tflops and peak else 0.0
    fp8_ratio = fp8 / (spec8.training_tflops * 1e12) if fp8 else 0.0  # FP8 peak over the bf16 one
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
    fp8 = fp8_ratio * peak  # follows --peak-tflops, --target-flops and a profile's estimated_flops
    mem_limit = min(mem, max_memory_gb) if (mem and max_memory_gb) else (max_memory_gb or mem)
    hbm = hbm or HBM_DEFAULT
    intra = intra or PCIE_BW
    inter = inter or ETHERNET_BW / g
    if max_comm_bw_gbps:  # the seed's ceiling: no link may be assumed faster than this
        intra, inter = min(intra, max_comm_bw_gbps * 1e9), min(inter, max_comm_bw_gbps * 1e9)
    return Cluster(nodes=nodes or 1, gpus_per_node=g, memory_gb=float(mem_limit), peak_flops=float(peak),
                   sustained=sustained, hbm_bw=hbm, intra_bw=intra, inter_bw=inter, gpu_name=name,
                   fp8_flops=float(fp8), device=device)


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
