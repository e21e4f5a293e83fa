"""Safetensors written one tensor at a time: an export never holds the whole model.

The safetensors layout is a little-endian u64 header length, a JSON header (each
tensor's dtype, shape and byte range) and the tensors' bytes. Shapes and dtypes are
known before any data is read (from the checkpoint's metadata, through the export's
transform run on meta tensors), so the header goes first and each tensor is made,
written and dropped in turn. Above `max_shard_bytes` the weights are split into
`model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`, as
transformers' own `save_pretrained` does.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

MAX_SHARD_BYTES = 5 * 2**30  # transformers' default shard size
INDEX = "model.safetensors.index.json"


@dataclass
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: object  # torch.dtype
    make: Callable[[], object]  # -> the tensor, read and converted when called

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


def _code(dtype) -> str:
    import torch

    codes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int8: "I8",
             torch.int32: "I32", torch.int64: "I64", torch.uint8: "U8", torch.float64: "F64", torch.bool: "BOOL"}
    return codes[dtype]


def shards(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    out: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if out[-1] and size + e.nbytes > max_bytes:
            out.append([])
            size = 0
        out[-1].append(e)
        size += e.nbytes
    return out


def write_one(path: Path, entries: list[Entry], metadata: dict[str, str]) -> None:
    """One safetensors file, tensor by tensor."""
    import torch

    header: dict = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": _code(e.dtype), "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for e in entries:
            t = e.make()
            if tuple(t.shape) != tuple(e.shape) or t.dtype != e.dtype:
                raise RuntimeError(f"{e.name}: made {tuple(t.shape)} {t.dtype}, planned {e.shape} {e.dtype}")
            flat = t.detach().contiguous().reshape(-1)
            if flat.numel():
                f.write(memoryview(flat.cpu().view(torch.uint8).numpy()))
            del t, flat


def write_sharded(folder: Path, entries: list[Entry], metadata: dict[str, str],
                  max_bytes: Optional[int] = None) -> list[Path]:
    """model.safetensors, or shards and their index when the weights exceed `max_bytes`."""
    parts = shards(entries, max_bytes or MAX_SHARD_BYTES)
    if len(parts) == 1:
        write_one(folder / "model.safetensors", parts[0], metadata)
        return [folder / "model.safetensors"]
    files = []
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
        write_one(folder / name, part, metadata)
        files.append(folder / name)
        weight_map.update({e.name: name for e in part})
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": sum(e.nbytes for e in entries)},
                                            "weight_map": weight_map}, indent=2) + "\n", encoding="utf-8")
    return files
