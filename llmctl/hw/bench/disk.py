"""Sequential write (with fsync) and read throughput in the checkpoint folder.

Checkpoints are big sequential writes that must reach the disk, so the write
figure counts until fsync returns. Before reading back, the file's pages are
dropped from the page cache (posix_fadvise DONTNEED, allowed for any user on
clean pages), so the read figure is the storage's and not memory's. The test file
is removed afterwards, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from llmctl.errors import LlmctlError

BLOCK = 4 * 2**20


def sequential(folder: str | os.PathLike, duration: float, progress: Callable[[str], None],
               max_bytes: int | None = None) -> dict[str, Any]:
    """Write for at most half of `duration` (and at most `max_bytes`), then read it back."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise LlmctlError(f"cannot use {folder} for the disk benchmark: {e.strerror or e}") from e
    # Never take more than a tenth of the free space (or 8 GiB): a benchmark must not fill a disk.
    cap = min(max_bytes or 8 * 2**30, free // 10)
    if cap < BLOCK:
        raise LlmctlError(f"{folder} has too little free space for the disk benchmark ({free} bytes)")
    path = folder / f".llmctl-disk-bench-{os.getpid()}.tmp"
    block = os.urandom(BLOCK)  # incompressible, so compressing filesystems do not flatter the figure
    half = duration / 2
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        written = 0
        t0 = time.perf_counter()
        try:
            while written + BLOCK <= cap and (written == 0 or time.perf_counter() - t0 < half):
                written += os.write(fd, block)
            os.fsync(fd)
            t_write = time.perf_counter() - t0
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        progress(f"  disk write {folder}: {written / 2**20:.0f} MiB in {t_write:.2f} s "
                 f"= {written / t_write / 1e9:.3f} GB/s (fsync'd)")
        fd = os.open(path, os.O_RDONLY)
        read = 0
        t0 = time.perf_counter()
        try:
            while time.perf_counter() - t0 < half or read == 0:
                chunk = os.read(fd, BLOCK)
                if not chunk:
                    break
                read += len(chunk)
            t_read = time.perf_counter() - t0
        finally:
            os.close(fd)
        progress(f"  disk read  {folder}: {read / 2**20:.0f} MiB in {t_read:.2f} s = {read / t_read / 1e9:.3f} GB/s")
    except OSError as e:
        raise LlmctlError(f"disk benchmark in {folder} failed: {e.strerror or e}") from e
    finally:
        try:
            path.unlink()
        except OSError:
            pass
    return {"measured": {"disk_write_gbps": round(written / t_write / 1e9, 4),
                         "disk_read_gbps": round(read / t_read / 1e9, 4)},
            "details": {"folder": str(folder), "bytes_written": written, "bytes_read": read}}
