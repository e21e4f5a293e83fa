"""Collective and point-to-point times: ring algorithms with bandwidth and latency terms.

The bus-bandwidth conventions are nccl-tests' (README "Performance"): an
all-reduce over n ranks moves 2(n-1)/n of the buffer through every link, an
all-gather or reduce-scatter (n-1)/n, each in 2(n-1) resp. (n-1) latency steps.
"""

from __future__ import annotations

# The fraction of the network link rate (per GPU, one direction) a ring collective across nodes
# reaches as bus bandwidth: InfiniBand's encoding and headers, NCCL's protocol and the proxy
# thread leave less than the line rate (calibrated; see docs/planner.md). Inside a node the
# TP bus efficiency of `llmctl.plan.cluster` plays the same part.
NET_BUS_EFFICIENCY = 0.65


def all_reduce(nbytes: float, n: int, bw: float, latency: float) -> float:
    """Ring all-reduce of `nbytes` over `n` ranks on links of `bw` bytes/s."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * latency


def all_gather(nbytes: float, n: int, bw: float, latency: float) -> float:
    """Ring all-gather (or reduce-scatter) of a `nbytes` result over `n` ranks."""
    if n <= 1:
        return 0.0
    return (n - 1) / n * nbytes / bw + (n - 1) * latency


reduce_scatter = all_gather


def p2p(nbytes: float, bw: float, latency: float) -> float:
    """One point-to-point send."""
    return nbytes / bw + latency


def group_bw(stride: int, size: int, gpus_per_node: int, intra: float, inter: float) -> float:
    """Bandwidth of a ring whose members are `stride` ranks apart.

    Ranks are numbered node by node (tp fastest, then cp, dp, pp: Megatron's order),
    so every group stays inside one node iff stride * size divides the GPUs per node
    (3 ranks of an 8-GPU node would straddle two nodes); otherwise its ring crosses
    the network and the slowest link bounds it.
    """
    if size <= 1:
        return intra
    span = stride * size
    return intra if span <= gpus_per_node and gpus_per_node % span == 0 else inter * NET_BUS_EFFICIENCY
