"""The table of known accelerators: datasheet peaks, each with its source.

Rates are *dense* (NVIDIA's datasheets quote tensor rates "with sparsity"; the
dense figure is half of that, and that is what a training matmul can reach).
TFLOP/s per GPU; memory and NVLink bandwidth in GB/s, NVLink one direction (the
datasheets quote both directions together, e.g. H100's 900 GB/s is 450 each way).
PCIe cards list their NVLink bridge bandwidth, which only links bridged pairs: the
probe decides from the real links whether NVLink is there.

A name NVML reports is matched against each entry's patterns in order; an unknown
GPU is reported as unknown (never guessed), and the planner then asks for
`--peak-tflops`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Optional

_A100 = "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf)"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet)"
_H200 = "NVIDIA H200 Tensor Core GPU product page and datasheet (nvidia.com/en-us/data-center/h200)"
_GH200 = "NVIDIA GH200 Grace Hopper Superchip datasheet (nvidia.com/en-us/data-center/grace-hopper-superchip)"
_B200 = "NVIDIA HGX B200 specifications, per GPU = 8-GPU total / 8 (nvidia.com/en-us/data-center/hgx)"
_L40S = "NVIDIA L40S datasheet (nvidia.com/en-us/data-center/l40s)"
_L4 = "NVIDIA L4 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/l4)"
_A10 = "NVIDIA A10 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/products/a10-gpu)"
_V100 = "NVIDIA Tesla V100 datasheet (volta-v100-datasheet-update-us-1165301-r5.pdf)"


@dataclass(frozen=True)
class AcceleratorSpec:
    """Datasheet peaks of one GPU model."""

    name: str
    patterns: tuple[str, ...]
    memory_gb: float
    bf16_tflops: Optional[float]
    fp16_tflops: Optional[float]
    fp8_tflops: Optional[float]
    tf32_tflops: Optional[float]
    fp32_tflops: float
    memory_bw_gbps: float
    nvlink_bw_gbps: Optional[float]
    source: str

    @property
    def training_tflops(self) -> float:
        """Peak in the training precision: bf16, or fp16 where there is no bf16 (V100)."""
        return self.bf16_tflops or self.fp16_tflops or self.fp32_tflops

    def to_profile(self) -> dict:
        """The `[accelerator]` section for this entry."""
        d = {k: v for k, v in asdict(self).items() if k not in ("patterns", "memory_gb") and v is not None}
        return {"known": True, **d}


def _s(name, patterns, bf16, fp16, fp8, tf32, fp32, mem, nvlink, source) -> AcceleratorSpec:
    # Capacity as the datasheet names it (the entry name carries it, e.g. "80GB"), in bytes / 1e9 as
    # llmctl counts memory everywhere: an HBM datasheet's "GB" is binary (an "80GB" H100 or A100 holds
    # 80 GiB = 85.9e9 bytes; NVML reports 81,559 resp. 81,920 MiB), a GDDR board's decimal (an L40S's
    # 48 GB is 46,068 MiB)
    gb = re.search(r"(\d+)GB", name)
    cap = float(gb.group(1)) if gb else _CAPACITY[name]
    if name not in _GDDR:
        cap = round(cap * 2**30 / 1e9, 1)
    return AcceleratorSpec(name, tuple(patterns), cap, bf16, fp16, fp8, tf32, fp32, mem, nvlink, source)


# Capacities of the entries whose name does not say it.
_GDDR = {"L40S", "L4", "A10"}  # GDDR boards: decimal capacities
_CAPACITY = {"B200": 180.0, "L40S": 48.0, "L4": 24.0, "A10": 24.0, "V100 SXM2": 32.0, "V100 PCIe": 32.0}


# Order matters: more specific patterns first (H200 NVL before H200, GH200 144G before GH200).
TABLE: tuple[AcceleratorSpec, ...] = (
    _s("A100 SXM4 40GB", [r"A100-SXM4-40GB"], 312, 312, None, 156, 19.5, 1555, 300, _A100),
    _s("A100 SXM4 80GB", [r"A100-SXM4-80GB", r"A100-SXM-80GB"], 312, 312, None, 156, 19.5, 2039, 300, _A100),
    _s("A100 PCIe 40GB", [r"A100-PCIE-40GB"], 312, 312, None, 156, 19.5, 1555, 300, _A100),
    _s("A100 PCIe 80GB", [r"A100 80GB PCIe", r"A100-PCIE-80GB"], 312, 312, None, 156, 19.5, 1935, 300, _A100),
    _s("H100 NVL 94GB", [r"H100 NVL"], 835.5, 835.5, 1670.5, 417.5, 60, 3900, 300, _H100),
    _s("H100 PCIe 80GB", [r"H100 PCIe"], 756.5, 756.5, 1513, 378, 51.2, 2000, 300, _H100),
    _s("H100 SXM5 80GB", [r"H100 80GB HBM3", r"H100-SXM5", r"H100 SXM"], 989.4, 989.4, 1978.9, 494.7, 66.9,
       3350, 450, _H100),
    _s("GH200 144GB HBM3e", [r"GH200 144G"], 989.4, 989.4, 1978.9, 494.7, 66.9, 4900, 450, _GH200),
    _s("GH200 96GB", [r"GH200"], 989.4, 989.4, 1978.9, 494.7, 66.9, 4000, 450, _GH200),
    _s("H200 NVL 141GB", [r"H200 NVL"], 835.5, 835.5, 1670.5, 417.5, 60, 4800, 450, _H200),
    _s("H200 SXM 141GB", [r"H200"], 989.4, 989.4, 1978.9, 494.7, 66.9, 4800, 450, _H200),
    _s("B200", [r"B200"], 2250, 2250, 4500, 1125, 75, 8000, 900, _B200),
    _s("L40S", [r"L40S"], 362.05, 362.05, 733, 183, 91.6, 864, None, _L40S),
    _s("L4", [r"\bL4\b"], 121, 121, 242.5, 60, 30.3, 300, None, _L4),
    _s("A10", [r"\bA10\b"], 125, 125, None, 62.5, 31.2, 600, None, _A10),
    _s("V100S PCIe 32GB", [r"V100S-PCIE"], None, 130, None, None, 16.4, 1134, None, _V100),
    _s("V100 SXM2", [r"V100-SXM2"], None, 125, None, None, 15.7, 900, 150, _V100),
    _s("V100 PCIe", [r"V100-PCIE"], None, 112, None, None, 14, 900, None, _V100),
)


def lookup(gpu_name: str) -> Optional[AcceleratorSpec]:
    """The table entry for an NVML GPU name, or None when the GPU is unknown."""
    for spec in TABLE:
        if any(re.search(p, gpu_name, re.IGNORECASE) for p in spec.patterns):
            return spec
    return None


def describe(gpu_name: str) -> dict:
    """The `[accelerator]` section for a GPU name: the table's entry, or unknown."""
    spec = lookup(gpu_name)
    if spec is None:
        return {"known": False, "name": gpu_name}
    return spec.to_profile()
