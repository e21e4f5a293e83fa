"""Decode attention that reads the paged KV cache block by block (`paged_attention =
"blockwise"`), instead of gathering each sequence's keys into one padded copy.

The gather path (llmctl.serve.runner) copies every decoding sequence's K and V, padded
to the group's longest context, out of the pool each step and layer, then runs one
`scaled_dot_product_attention`: for 64 sequences of 2,048 tokens that copy is as large
as the keys themselves, written and read back once more per layer. Here the keys are
visited a segment of block-table columns at a time, flash-decoding style (Dao et al.
2023, "Flash-Decoding for long-context inference"; the online softmax of Milakov &
Gimelshein 2018): each segment takes whole blocks of the pool (one index per block,
not per token), scores it against the one query row per sequence, and folds it into a
running max, sum and weighted-value accumulator. The segment is sized to stay in the
CPU's cache (SEGMENT_BYTES), so the copy never grows with the context.

Pure PyTorch ops, so every segment costs a handful of operator calls: on a CPU that
overhead is small beside the copy once contexts are long; on a GPU each op is a kernel
launch, and the real in-place path there is a fused paged-attention kernel (not here;
docs/performance.md).
"""

from __future__ import annotations

import math

# Bytes of K (and as many of V) one segment takes out of the pool: on a CPU, small enough
# to stay in a core's L2 while it is scored and summed (measured: tests/bench/
# test_bench_paged_attention.py's segment sweep); on a GPU, where each op is a kernel
# launch, a share of the L2 (H100: 50 MB), so that short contexts take one segment (not
# measured on a GPU yet).
SEGMENT_BYTES = 1 << 20
GPU_SEGMENT_BYTES = 32 << 20


def segment_blocks(batch: int, block_size: int, kv_heads: int, head_dim: int, elem: int,
                   gpu: bool = False) -> int:
    """Block-table columns per segment: SEGMENT_BYTES of keys for `batch` sequences, at least one."""
    per_block = batch * block_size * kv_heads * head_dim * elem
    return max(1, (GPU_SEGMENT_BYTES if gpu else SEGMENT_BYTES) // per_block)


def paged_decode(q, k_pool, v_pool, tables, lens, block_size: int, scale=None):
    """Attention of one query per sequence over its cached keys, read from the pool.

    q: (B, heads, head_dim); k_pool, v_pool: (blocks * block_size, kv_heads, head_dim);
    tables: (B, nblk) int64 block ids, padded with any valid block; lens: (B,) keys each
    sequence sees (at least 1: its own new token). Grouped-query heads as SDPA's
    enable_gqa: query head h reads kv head h // (heads / kv_heads). Returns (B, heads *
    head_dim) in q's dtype; scores and sums in fp32 at least.
    """
    import torch

    B, H, d = q.shape
    kvh = k_pool.shape[1]
    g = H // kvh
    acc_t = torch.promote_types(q.dtype, torch.float32)
    kb = k_pool.view(-1, block_size, kvh, d)
    vb = v_pool.view(-1, block_size, kvh, d)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qg = (q.to(acc_t) * scale).view(B, kvh, g, d)
    m = torch.full((B, kvh, g, 1), float("-inf"), dtype=acc_t, device=q.device)
    den = torch.zeros((B, kvh, g, 1), dtype=acc_t, device=q.device)
    acc = torch.zeros((B, kvh, g, d), dtype=acc_t, device=q.device)
    nblk = tables.shape[1]
    step = segment_blocks(B, block_size, kvh, d, k_pool.element_size(), gpu=q.is_cuda)
    lens = lens.view(B, 1, 1, 1)
    for c0 in range(0, nblk, step):
        cols = tables[:, c0:c0 + step]
        S = cols.shape[1] * block_size
        # (B, nb, bs, kvh, d) -> keys (B, kvh, d, S), values (B, kvh, S, d)
        k = kb[cols].view(B, S, kvh, d).permute(0, 2, 3, 1).to(acc_t)
        v = vb[cols].view(B, S, kvh, d).transpose(1, 2).to(acc_t)
        s = qg @ k  # (B, kvh, g, S)
        pos = torch.arange(c0 * block_size, c0 * block_size + S, device=q.device)
        s = s.masked_fill(pos.view(1, 1, 1, S) >= lens, float("-inf"))
        # Every sequence has key 0 in the first segment, so m is finite from then on and a
        # later segment past a sequence's length adds exp(-inf) = 0, never NaN.
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        p = (s - m_new).exp_()
        fix = (m - m_new).exp_()
        den = den.mul_(fix).add_(p.sum(-1, keepdim=True))
        acc = acc.mul_(fix).add_(p @ v)
        m = m_new
    return (acc / den).view(B, H * d).to(q.dtype)
