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
NET_BUS_EFFICIENCY = 0.66


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


def group_bw(stride: int, size: int, gpus_per_node: int, intra: float, inter: float, collective: bool = True) -> float:
    """Bus bandwidth of a group whose members are `stride` ranks apart.

    Ranks are numbered node by node (tp fastest, then cp, dp, pp: Megatron's order),
    so every group stays inside one node iff stride * size divides the GPUs per node
    (3 ranks of an 8-GPU node would straddle two nodes); otherwise its ring crosses
    the network. A collective then runs one ring per channel, and each of the k
    members a node holds sends over its own NIC (one per GPU, as on DGX-class nodes),
    so the ring's bus bandwidth is k NICs' worth, up to the intra-node bandwidth (NCCL's
    rings through a node; nccl-tests' multi-node busbw approaches the node's NIC total).
    A point-to-point exchange (`collective=False`: pipeline sends, ring attention) crosses
    on one member's NIC.
    """
    if size <= 1:
        return intra
    span = stride * size
    if span <= gpus_per_node and gpus_per_node % span == 0:
        return intra
    # members per node when the group fills whole nodes evenly; a group that straddles unevenly
    # (ranks 6, 7, 8 of 8-GPU nodes) crosses where a node holds only one of them
    even = stride < gpus_per_node and gpus_per_node % stride == 0 and span % gpus_per_node == 0
    k = gpus_per_node // stride if collective and even else 1
    return min(intra, k * inter * NET_BUS_EFFICIENCY)
