"""The on-disk format of prepared data, and its checked reader.

    OUT/
      meta.json          written last: what is here (its presence means "complete")
      tokenizer.json     the tokenizer the ids came from
      train-00000.h5     HDF5: `tokens` (uint16/uint32, documents joined by eos),
      ...                      `doc_starts` (int64, where each document begins),
      val-00000.h5             `loss_mask` (uint8, chat data only: 1 where a token is a
                               target the loss counts, the answers);
                               attrs: split, index, tokenizer_sha256, vocab_size, eos_id

A reader trusts only what meta.json lists, and checks each shard against it (size,
token count, tokenizer hash) before use: a truncated or foreign shard is an error
that names the file, never silently read.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError

FORMAT = "llmctl-tokens-v1"
META = "meta.json"
TOKENIZER = "tokenizer.json"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.h5"


def write_shard(path: Path, tokens, doc_starts, attrs: dict[str, Any], mask=None) -> int:
    """Write one shard (through a temporary name and a rename); returns its size in bytes.

    HDF5 builds the file in memory and Python writes it out: a write the operating system
    refuses (a full disk) is then one OSError, which becomes one line naming the file and
    the space left, and the temporary file is removed. (HDF5 writing to disk itself reports
    a full disk from object destructors too, as "Exception ignored" tracebacks, and may
    close a file it could not complete.)"""
    import io

    import h5py
    import numpy as np

    from llmctl.fsutil import writing

    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        # Contiguous, uncompressed: the trainer reads random windows, and a slice of a
        # contiguous dataset is one read.
        f.create_dataset("tokens", data=tokens)
        f.create_dataset("doc_starts", data=np.asarray(doc_starts, dtype=np.int64))
        if mask is not None:
            f.create_dataset("loss_mask", data=np.asarray(mask, dtype=np.uint8))
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["format"] = FORMAT
        f.attrs["n_tokens"] = int(len(tokens))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with writing(tmp, "data prepare"):
            with open(tmp, "wb") as fh:
                fh.write(image.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path.stat().st_size


class ShardWriter:
    """Collect documents of one split and cut them into shards of `shard_tokens` tokens."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int, attrs: dict[str, Any]):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.shard_tokens = shard_tokens
        self.attrs = attrs
        self.parts: list = []
        self.masks: list = []  # per document, when the data has a loss mask (chat)
        self.starts: list[int] = []
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []
        self.tokens = 0
        self.documents = 0

    def add(self, ids, mask=None) -> None:
        """Append one document (its ids, eos included; `mask`: 1 where the loss counts)."""
        self.starts.append(self.buffered)
        self.parts.append(ids)
        if mask is not None:
            self.masks.append(mask)
        self.buffered += len(ids)
        self.tokens += len(ids)
        self.documents += 1
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> dict[str, Any]:
        if self.buffered:
            self._flush(self.buffered)
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}

    def _flush(self, n: int) -> None:
        import numpy as np

        data = np.concatenate(self.parts).astype(self.dtype, copy=False)
        head, rest = data[:n], data[n:]
        mask = np.concatenate(self.masks).astype(np.uint8, copy=False) if self.masks else None
        starts = [s for s in self.starts if s < n]
        name = shard_name(self.split, len(self.shards))
        size = write_shard(self.folder / name, head, starts,
                           {**self.attrs, "split": self.split, "index": len(self.shards)},
                           mask[:n] if mask is not None else None)
        self.shards.append({"file": name, "tokens": int(n), "documents_starting": len(starts),
                            "bytes": size})
        # A document cut at the boundary continues in the next shard without a new start.
        self.parts = [rest] if len(rest) else []
        self.masks = [mask[n:]] if mask is not None and len(rest) else []
        self.starts = [s - n for s in self.starts if s >= n]
        self.buffered = len(rest)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """meta.json of a prepared data folder, or an error saying how to make one."""
    folder = Path(folder)
    p = folder / META
    if not p.is_file():
        raise LlmctlError(f"{folder}: no prepared data here (no {META})",
                          hint="run `llmctl data prepare --config <data config>` first")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LlmctlError(f"{p}: cannot read: {e}") from e
    if meta.get("format") != FORMAT:
        raise LlmctlError(f"{p}: format {meta.get('format')!r} is not {FORMAT!r}",
                          hint="prepare the data again with this llmctl")
    return meta


class TokenStore:
    """One split of a prepared data folder as one long token array, read by slices."""

    def __init__(self, folder: str | Path, split: str):
        import h5py
        import numpy as np

        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        info = self.meta["splits"].get(split)
        if info is None:
            raise LlmctlError(f"{self.folder}: no {split!r} split in {META}")
        self.split = split
        self.files, self.datasets, self.masks, bounds = [], [], [], [0]
        self.has_mask = bool(self.meta.get("loss_mask"))
        want_hash = self.meta["tokenizer"]["sha256"]
        for s in info["shards"]:
            path = self.folder / s["file"]
            if not path.is_file():
                raise LlmctlError(f"{path}: shard missing (listed in {META})",
                                  hint="prepare the data again")
            if path.stat().st_size != s["bytes"]:
                raise LlmctlError(f"{path}: corrupt shard: {path.stat().st_size} bytes, "
                                  f"{META} says {s['bytes']}", hint="prepare the data again")
            try:
                f = h5py.File(path, "r")
                ds = f["tokens"]
                attrs = dict(f.attrs)
            except (OSError, KeyError) as e:
                raise LlmctlError(f"{path}: corrupt shard: {e}", hint="prepare the data again") from None
            if attrs.get("format") != FORMAT or attrs.get("tokenizer_sha256") != want_hash \
                    or ds.shape != (s["tokens"],):
                f.close()
                raise LlmctlError(f"{path}: shard does not match {META} (format, tokenizer or length)",
                                  hint="prepare the data again")
            self.files.append(f)
            self.datasets.append(ds)
            if self.has_mask:
                if "loss_mask" not in f:
                    f.close()
                    raise LlmctlError(f"{path}: shard has no loss_mask ({META} says the data has one)",
                                      hint="prepare the data again")
                self.masks.append(f["loss_mask"])
            bounds.append(bounds[-1] + s["tokens"])
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.tokens = int(bounds[-1])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    def read(self, start: int, length: int):
        """Tokens [start, start+length) as int64, across shard boundaries."""
        return self._read(self.datasets, start, length)

    def read_mask(self, start: int, length: int):
        """The loss mask of tokens [start, start+length) (1: a target the loss counts), or
        None for data without one."""
        return self._read(self.masks, start, length) if self.has_mask else None

    def _read(self, datasets, start: int, length: int):
        import numpy as np

        if start < 0 or start + length > self.tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside 0..{self.tokens}")
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self.bounds, start, side="right")) - 1
        pos, filled = start, 0
        while filled < length:
            lo = pos - int(self.bounds[i])
            take = min(length - filled, int(self.bounds[i + 1]) - pos)
            out[filled:filled + take] = datasets[i][lo:lo + take]
            filled += take
            pos += take
            i += 1
        return out

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files, self.datasets, self.masks = [], [], []
