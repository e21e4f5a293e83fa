"""The paged KV cache: fixed-size blocks from one pool, a block table per sequence,
and the prefix cache over it.

As in vLLM (Kwon et al. 2023, PagedAttention): a sequence owns ceil(len/block)
blocks wherever they lie in the pool, so memory is never reserved for tokens that
are not there yet and freeing a request returns whole blocks. The pool is one
(blocks*block_size, kv_heads, head_dim) tensor per layer for K and for V; a
token's slot is block_id*block_size + offset.

Blocks may be shared. The samples of one request (`n`, `best_of`) take the full
blocks of the prompt that its first sample computed (`share`). With prefix caching
(vLLM's automatic prefix caching), every full block a sequence has computed is also
filed under a chained hash: blake2b(parent block's hash + the block's token ids),
so a hash names the whole prefix up to the end of its block, not just 16 tokens. A
later sequence whose tokens start with the same blocks takes them (`match`) and
computes only the rest. A shared or cached block is full and never written again
(each holder writes from its own first uncomputed token on, in blocks of its own),
so no copy-on-write is needed.

A block's holders are counted (`refs`, absent: one). When the last lets go, a
cached block stays filed, in LRU order (`evictable`), until a reservation finds no
block that holds nothing (`free`) and takes the least recently released one; only
then is its hash forgotten.
"""

from __future__ import annotations

import collections
import hashlib
from array import array


class PagedKVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, num_blocks: int, block_size: int,
                 dtype=None, device="cpu", prefix_caching: bool = False):
        import torch

        self.block_size, self.num_blocks = block_size, num_blocks
        self.prefix_caching = prefix_caching
        shape = (num_blocks * block_size, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype or torch.float32, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype or torch.float32, device=device) for _ in range(layers)]
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))  # holding nothing, filed under no hash
        self.refs: dict[int, int] = {}  # holders of a shared block (absent: one)
        self.cached: dict[bytes, int] = {}      # prefix hash -> the block holding its K/V
        self.hash_of: dict[int, bytes] = {}     # the reverse, for eviction
        self.evictable: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unheld; LRU first
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks a reservation can take: free ones and cached ones that nobody holds."""
        return len(self.free) + len(self.evictable)

    @property
    def used_fraction(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def reserve(self, seq, tokens: int) -> bool:
        """Give `seq` blocks for `tokens` tokens in all; False (nothing taken) if the pool is short."""
        need = self.blocks_for(tokens) - len(seq.blocks)
        if need <= 0:
            return True
        if need > self.num_free:
            return False
        for _ in range(need):
            seq.blocks.append(self.free.pop() if self.free else self._evict())
        return True

    def _evict(self) -> int:
        b, _ = self.evictable.popitem(last=False)
        del self.cached[self.hash_of.pop(b)]
        self.evictions += 1
        return b

    def release(self, seq) -> None:
        # Last block first: a sequence's tail is the part least likely to be shared, so
        # of its cached blocks the tail ones are evicted first (vLLM does the same).
        for b in reversed(seq.blocks):
            held = self.refs.pop(b, 1)
            if held > 1:
                if held > 2:
                    self.refs[b] = held - 1
            elif b in self.hash_of:
                self.evictable[b] = None
            else:
                self.free.append(b)
        seq.blocks = []

    def _hold(self, b: int) -> None:
        if b in self.evictable:
            del self.evictable[b]  # its one holder now
        else:
            self.refs[b] = self.refs.get(b, 1) + 1

    def share(self, seq, source, tokens: int) -> None:
        """`seq` (holding nothing) takes the blocks of `source` holding its first `tokens`
        tokens (a multiple of the block size, all of them computed)."""
        assert not seq.blocks and tokens % self.block_size == 0
        seq.blocks = list(source.blocks[:tokens // self.block_size])
        for b in seq.blocks:
            self._hold(b)

    # --- the prefix cache --------------------------------------------------------------
    def block_hashes(self, seq, count: int) -> list[bytes]:
        """Chained hashes of `seq`'s first `count` full blocks. Kept on the sequence: its
        tokens only ever grow, so a hash once made stays right (preemption included)."""
        hs, bs = seq.block_hashes, self.block_size
        if len(hs) < count:
            toks = seq.tokens
            while len(hs) < count:
                i = len(hs)
                h = hashlib.blake2b(hs[-1] if hs else b"", digest_size=16)
                h.update(array("q", toks[i * bs:(i + 1) * bs]).tobytes())
                hs.append(h.digest())
        return hs[:count]

    def matchable(self, seq) -> int:
        """Full blocks of `seq` that a match may take: never its last token, which it must
        run itself to get the logits of its next sample."""
        return (len(seq.prompt_ids) + len(seq.output_ids) - 1) // self.block_size

    def cached_prefix(self, seq) -> int:
        """How many of `seq`'s leading blocks are in the cache."""
        hit = 0
        for h in self.block_hashes(seq, self.matchable(seq)):
            if h not in self.cached:
                break
            hit += 1
        return hit

    def match(self, seq) -> int:
        """`seq` (holding nothing) takes the cached blocks of its longest cached prefix;
        returns the tokens they hold (its K/V computed)."""
        assert not seq.blocks and seq.num_computed == 0
        hit = self.cached_prefix(seq)
        seq.blocks = [self.cached[h] for h in seq.block_hashes[:hit]]
        for b in seq.blocks:
            self._hold(b)
        return hit * self.block_size

    def commit(self, seq, start: int, stop: int) -> None:
        """`seq` has computed tokens [start, stop): file its blocks that became full."""
        if not self.prefix_caching:
            return
        bs = self.block_size
        first, last = start // bs, min(stop // bs, len(seq.blocks))
        if last <= first:
            return
        hashes = self.block_hashes(seq, last)
        for i in range(first, last):
            b, h = seq.blocks[i], hashes[i]
            # The same prefix computed twice at once (both missed): the first one filed
            # stays; this copy goes back to the pool with its sequence.
            if b not in self.hash_of and h not in self.cached:
                self.cached[h], self.hash_of[b] = b, h

    def slot(self, seq, pos: int) -> int:
        """Where token `pos` of `seq` lives in the pool."""
        bs = self.block_size
        return seq.blocks[pos // bs] * bs + pos % bs

    def slots(self, seq, start: int, stop: int) -> list[int]:
        bs, table = self.block_size, seq.blocks
        return [table[p // bs] * bs + p % bs for p in range(start, stop)]
