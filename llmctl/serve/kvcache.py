"""The paged KV cache: fixed-size blocks from one pool, a block table per sequence.

As in vLLM (Kwon et al. 2023, PagedAttention): a sequence owns ceil(len/block)
blocks wherever they lie in the pool, so memory is never reserved for tokens that
are not there yet and freeing a request returns whole blocks. The pool is one
(blocks*block_size, kv_heads, head_dim) tensor per layer for K and for V; a
token's slot is block_id*block_size + offset.
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
        self.free.extend(reversed(seq.blocks))
        seq.blocks = []

    def slot(self, seq, pos: int) -> int:
        """Where token `pos` of `seq` lives in the pool."""
        bs = self.block_size
        return seq.blocks[pos // bs] * bs + pos % bs

    def slots(self, seq, start: int, stop: int) -> list[int]:
        bs, table = self.block_size, seq.blocks
        return [table[p // bs] * bs + p % bs for p in range(start, stop)]
