"""Batches of token windows from the HDF5 shards, resumable at the exact sample.

The training split is cut into windows of seq_len+1 tokens at stride seq_len
(inputs and the next-token targets; in chat data a target outside the answers is
-100, which the loss skips); each epoch visits them in a permutation fixed
by (seed, epoch). The loader's whole state is one integer, the number of windows
consumed, so a checkpoint resumes at the very next sample and a resumed run sees
exactly the data an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

from llmctl.errors import LlmctlError


class WindowSampler:
    """Shuffled windows of the training split; `position` counts windows consumed."""

    def __init__(self, store, seq_len: int, seed: int):
        self.store, self.seq_len, self.seed = store, seq_len, seed
        self.windows = (store.tokens - 1) // seq_len
        if self.windows < 1:
            raise LlmctlError(f"{store.folder}: the {store.split} split has {store.tokens} tokens, "
                              f"fewer than seq_len+1 = {seq_len + 1}",
                              hint="prepare more data or lower data.seq_len")
        self.position = 0
        self._epoch = -1
        self._order = None

    def _window(self, n: int) -> int:
        import numpy as np

        epoch, i = divmod(n, self.windows)
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.windows)
            self._epoch = epoch
        return int(self._order[i])

    def next_batch(self, batch: int, rank: int = 0, world: int = 1):
        """(inputs, targets) as int64 arrays (batch, seq_len); data-parallel ranks take
        disjoint slices of the same global batch."""
        import numpy as np

        x = np.empty((batch, self.seq_len + 1), dtype=np.int64)
        base = self.position + rank * batch
        windows = [self._window(base + b) for b in range(batch)]
        for b, w in enumerate(windows):
            x[b] = self.store.read(w * self.seq_len, self.seq_len + 1)
        self.position += batch * world
        return x[:, :-1], masked_targets(self.store, x, windows, self.seq_len)

    @property
    def epoch(self) -> float:
        return self.position / self.windows

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "windows": self.windows, "seq_len": self.seq_len,
                "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("windows"), state.get("seq_len")) != (self.windows, self.seq_len):
            raise LlmctlError(
                f"the checkpoint's data position is for {state.get('windows')} windows of "
                f"{state.get('seq_len')} tokens, but the data has {self.windows} of {self.seq_len}",
                hint="the data or seq_len changed since the checkpoint; use a new run folder")
        self.position = int(state["position"])


def validation_batches(store, seq_len: int, batch: int, batches: int):
    """The first `batches` batches of validation windows, in order (the same every time)."""
    import numpy as np

    windows = (store.tokens - 1) // seq_len
    if windows < 1:
        raise LlmctlError(f"{store.folder}: the validation split has {store.tokens} tokens, "
                          f"fewer than seq_len+1 = {seq_len + 1}",
                          hint="raise val_fraction in the data config, or lower data.seq_len")
    out = []
    n = min(batches * batch, windows)
    for start in range(0, n, batch):
        ids = range(start, min(start + batch, n))
        x = np.stack([store.read(w * seq_len, seq_len + 1) for w in ids])
        out.append((x[:, :-1], masked_targets(store, x, list(ids), seq_len)))
    return out


IGNORE = -100  # the target the loss skips (torch's cross_entropy ignore_index)


def masked_targets(store, x, windows, seq_len: int):
    """The next-token targets of windows `x`; with a loss mask (chat data), IGNORE where the
    target token is not part of an answer."""
    y = x[:, 1:].copy()
    if getattr(store, "has_mask", False):
        for b, w in enumerate(windows):
            m = store.read_mask(w * seq_len, seq_len + 1)
            y[b][m[1:] == 0] = IGNORE
    return y
