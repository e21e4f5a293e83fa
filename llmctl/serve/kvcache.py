"""The paged KV cache: fixed-size blocks from one pool, a block table per sequence.

As in vLLM (Kwon et al. 2023, PagedAttention): a sequence owns ceil(len/block)
blocks wherever they lie in the pool, so memory is never reserved for tokens that
are not there yet and freeing a request returns whole blocks. The pool is one
(blocks*block_size, kv_heads, head_dim) tensor per layer for K and for V; a
token's slot is block_id*block_size + offset.

Blocks may be shared: the samples of one request (`n`, `best_of`) take the full
blocks of the prompt that its first sample computed (`share`), so the prompt is
computed and stored once. A shared block is full and never written again (each
sample writes from the next block on into its own), so no copy-on-write is
needed; a block returns to the pool when its last holder releases it.
"""

from __future__ import annotations


class PagedKVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, num_blocks: int, block_size: int,
                 dtype=None, device="cpu"):
        import torch

        self.block_size, self.num_blocks = block_size, num_blocks
        shape = (num_blocks * block_size, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype or torch.float32, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype or torch.float32, device=device) for _ in range(layers)]
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))
        self.refs: dict[int, int] = {}  # holders of a shared block (absent: one)

    @property
    def used_fraction(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def reserve(self, seq, tokens: int) -> bool:
        """Give `seq` blocks for `tokens` tokens in all; False (nothing taken) if the pool is short."""
        need = self.blocks_for(tokens) - len(seq.blocks)
        if need <= 0:
            return True
        if need > len(self.free):
            return False
        seq.blocks.extend(self.free.pop() for _ in range(need))
        return True

    def release(self, seq) -> None:
        for b in reversed(seq.blocks):
            held = self.refs.pop(b, 1)
            if held > 1:
                if held > 2:
                    self.refs[b] = held - 1
            else:
                self.free.append(b)
        seq.blocks = []

    def share(self, seq, source, tokens: int) -> None:
        """`seq` (holding nothing) takes the blocks of `source` holding its first `tokens`
        tokens (a multiple of the block size, all of them computed)."""
        assert not seq.blocks and tokens % self.block_size == 0
        seq.blocks = list(source.blocks[:tokens // self.block_size])
        for b in seq.blocks:
            self.refs[b] = self.refs.get(b, 1) + 1

    def slot(self, seq, pos: int) -> int:
        """Where token `pos` of `seq` lives in the pool."""
        bs = self.block_size
        return seq.blocks[pos // bs] * bs + pos % bs

    def slots(self, seq, start: int, stop: int) -> list[int]:
        bs, table = self.block_size, seq.blocks
        return [table[p // bs] * bs + p % bs for p in range(start, stop)]
