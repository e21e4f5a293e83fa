"""What a scheduler says about its cluster, in one shape for SLURM and PBS.

`Cluster` holds the partitions (queues) with the shape of each of their nodes;
`ClusterPartition.shape()` is the node shape a site-config can promise for the
whole partition (the smallest node, when they differ). `gpu_model()` turns a GRES
type into the GPU name the accelerator table knows, when the type says which part.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

# Short GRES types admins commonly use, and the part each names (as NVML names it).
# A type that does not say the part (plain `a100`: 40 or 80 GB? `v100`: 16 or 32 GB?)
# is left out on purpose: a wrong model gives the planner the wrong peak FLOP/s.
GRES_TYPES = {
    "h100": "NVIDIA H100 80GB HBM3", "h100_sxm": "NVIDIA H100 80GB HBM3",
    "h100_sxm5": "NVIDIA H100 80GB HBM3", "h100_80gb": "NVIDIA H100 80GB HBM3",
    "h100_pcie": "NVIDIA H100 PCIe", "h100_nvl": "NVIDIA H100 NVL",
    "h200": "NVIDIA H200", "h200_nvl": "NVIDIA H200 NVL", "b200": "NVIDIA B200",
    "a100_80g": "NVIDIA A100-SXM4-80GB", "a100_80gb": "NVIDIA A100-SXM4-80GB",
    "a100_sxm4_80gb": "NVIDIA A100-SXM4-80GB",
    "a100_40g": "NVIDIA A100-SXM4-40GB", "a100_40gb": "NVIDIA A100-SXM4-40GB",
    "a100_sxm4_40gb": "NVIDIA A100-SXM4-40GB",
    "l40s": "NVIDIA L40S", "l4": "NVIDIA L4", "a10": "NVIDIA A10",
    "v100_sxm2_32gb": "Tesla V100-SXM2-32GB",
}


def gpu_model(gres_type: Optional[str]) -> tuple[Optional[str], str]:
    """(NVML name or None, how it was found) for a GRES type.

    A type the table above lists maps to its part; a type in NVML's own words (what
    `AutoDetect=nvml` writes, e.g. `nvidia_h100_80gb_hbm3`) is looked up as it is.
    """
    from llmctl.hw.accelerators import lookup

    if not gres_type:
        return None, "the scheduler does not say which GPU"
    key = gres_type.lower().replace("-", "_")
    if key in GRES_TYPES:
        return GRES_TYPES[key], f"from GRES type {gres_type!r}: check `nvidia-smi -L` on a node"
    name = gres_type.replace("_", " ")
    if lookup(name) is not None and " " in name:  # NVML-style: several words
        return name.upper().replace("TESLA ", "Tesla "), f"from GRES type {gres_type!r}"
    return None, f"GRES type {gres_type!r} does not say which GPU"


@dataclass(frozen=True)
class NodeShape:
    cpus: int
    memory_mb: int
    gpus: int = 0
    gpu_type: Optional[str] = None
    features: tuple[str, ...] = ()


@dataclass
class ClusterPartition:
    """A partition (SLURM) or queue (PBS) as the scheduler reports it."""

    name: str
    nodes: int
    shapes: list[NodeShape] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    node_list: str = ""
    max_nodes: Optional[int] = None
    max_time_s: Optional[int] = None      # None: no limit
    default_time_s: Optional[int] = None
    default: bool = False
    state: str = "UP"
    hidden: bool = False
    kind: str = ""                        # PBS: Execution or Route

    def shape(self) -> Optional[NodeShape]:
        """The shape every node of the partition has at least (None without nodes)."""
        if not self.shapes:
            return None
        gpu_nodes = [s for s in self.shapes if s.gpus]
        types = {s.gpu_type for s in gpu_nodes}
        features = set.intersection(*(set(s.features) for s in self.shapes))
        return NodeShape(cpus=min(s.cpus for s in self.shapes),
                         memory_mb=min(s.memory_mb for s in self.shapes),
                         gpus=min(s.gpus for s in self.shapes),
                         gpu_type=types.pop() if len(types) == 1 and len(gpu_nodes) == len(self.shapes) else None,
                         features=tuple(sorted(features)))

    def mixed(self) -> list[tuple[NodeShape, int]]:
        """The distinct node shapes and how many nodes have each (one entry: uniform)."""
        counts = Counter(NodeShape(s.cpus, s.memory_mb, s.gpus, s.gpu_type) for s in self.shapes)
        return sorted(counts.items(), key=lambda kv: -kv[1])


@dataclass
class Cluster:
    scheduler: str                         # slurm or pbs
    name: str
    partitions: dict[str, ClusterPartition]
    version: str = ""
    dialect: str = ""                      # PBS: pbspro or torque
    default_partition: Optional[str] = None  # PBS: the server's default_queue

    def default(self) -> Optional[str]:
        if self.default_partition in self.partitions:
            return self.default_partition
        for name, p in self.partitions.items():
            if p.default:
                return name
        return None


def memory_gb(memory_mb: int) -> float:
    """MB (SLURM's M and PBS's mb are 1024 KB) to the GB a job asks for, rounded down to 0.1:
    SLURM's `--mem=NG` and PBS's `mem=Ngb` are N x 1024 MB, so a whole node's share fits."""
    return (memory_mb * 10 // 1024) / 10


def format_time(seconds: int) -> str:
    """Seconds as D-HH:MM:SS (HH:MM:SS under a day)."""
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    hms = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{days}-{hms}" if days else hms
