"""The machine the planner plans for: node shape, peak rates and links, per GPU.

Built from (highest precedence first) command-line flags, the hardware profile,
the site-config's partition, and the accelerator table below. The planner only
ever sees this one `Cluster` object, so the cost model never reads files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

from llmctl.errors import LlmctlError

# Dense bf16 peak TFLOP/s, memory GB, HBM GB/s (datasheets), and the intra-node bus
# bandwidth per GPU a tensor-parallel collective achieves in training, GB/s. The last
# is below NVLink's datasheet rate (A100 300, H100 450): A100 is calibrated on
# Narayanan et al. 2021 Table 1 (docs/planner.md, "Calibration").
ACCELERATORS: dict[str, tuple[float, float, float, float]] = {
    "H200": (989.0, 141.0, 4800.0, 450.0),
    "H100": (989.0, 80.0, 3350.0, 450.0),
    "A100-SXM4-40GB": (312.0, 40.0, 1555.0, 150.0),
    "A100": (312.0, 80.0, 2039.0, 150.0),
    "V100": (125.0, 32.0, 900.0, 150.0),
}


def lookup_accelerator(name: str) -> Optional[tuple[float, float, float, float]]:
    """Datasheet row for an NVML/marketing name, e.g. 'NVIDIA H100 80GB HBM3' -> H100."""
    up = name.upper().replace(" ", "-")
    for key, row in ACCELERATORS.items():  # longest, most specific keys come first
        if key in up:
            if key == "A100" and "40GB" in up:
                return ACCELERATORS["A100-SXM4-40GB"]
            return row
    return None


@dataclass(frozen=True)
class Cluster:
    """Per-GPU rates of an allocation of identical nodes (bytes, seconds, FLOP/s)."""

    nodes: int
    gpus_per_node: int
    memory_gb: float
    """Memory the plan may use per GPU (device memory, or --max-memory-gb)."""
    peak_flops: float
    """Dense bf16 peak FLOP/s of one GPU."""
    sustained: float
    """Fraction of peak a large matmul sustains (measured, or the calibrated default)."""
    hbm_bw: float
    """Device-memory bandwidth per GPU, bytes/s."""
    intra_bw: float
    """Intra-node bandwidth per GPU, bytes/s one direction."""
    inter_bw: float
    """Inter-node bandwidth per GPU (node NIC bandwidth / GPUs per node), bytes/s."""
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


def build_cluster(profile: Any = None, site: Any = None, *, nodes: Optional[int] = None,
                  gpus_per_node: Optional[int] = None, max_memory_gb: Optional[float] = None,
                  peak_tflops: Optional[float] = None, target_flops: Optional[float] = None,
                  max_comm_bw_gbps: Optional[float] = None) -> Cluster:
    """Merge flags > hardware profile > site partition > accelerator table into a Cluster."""
    name = "GPU"
    g = mem = peak = hbm = intra = inter = None
    sustained = DEFAULT_SUSTAINED
    if site is not None:
        part = site.partitions.get(site.default_partition) if site.default_partition else None
        part = part or next(iter(site.partitions.values()), None)
        if part is not None and part.gpus_per_node:
            g = part.gpus_per_node
            if part.gpu_model:
                name = part.gpu_model
                row = lookup_accelerator(part.gpu_model)
                if row:
                    peak, mem, hbm, intra = row[0] * 1e12, row[1], row[2] * 1e9, row[3] * 1e9
        if site.network.inter_node_bw_gbps and g:
            inter = site.network.inter_node_bw_gbps * 1e9 / g
    if profile is not None:
        pg = profile.gpu.count or None
        if pg:
            g = pg
        if profile.gpu.devices:
            dev = profile.gpu.devices[0]
            name, mem = dev.name, dev.memory_gb
            row = lookup_accelerator(dev.name)
            if row and intra is None:
                intra = row[3] * 1e9
        lim = profile.limits
        if g:
            peak = lim.estimated_flops / g
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
    hbm = hbm or 2e12
    intra = intra or 32e9  # PCIe 4.0 x16, one direction
    inter = inter or 12.5e9 / g  # 100 Gb/s Ethernet per node
    if max_comm_bw_gbps:  # the seed's ceiling: no link may be assumed faster than this
        intra, inter = min(intra, max_comm_bw_gbps * 1e9), min(inter, max_comm_bw_gbps * 1e9)
    return Cluster(nodes=nodes or 1, gpus_per_node=g, memory_gb=float(mem_limit), peak_flops=float(peak),
                   sustained=sustained, hbm_bw=hbm, intra_bw=intra, inter_bw=inter, gpu_name=name)
