"""Device-memory copy bandwidth: bytes read plus bytes written per second.

A copy of S bytes reads S and writes S, so it moves 2S (the convention of the
h100-x1 fixture's 2.92 TB/s and of STREAM's "Copy"). GPUs copy 1 GiB buffers in
batches between syncs; a CPU copies 256 MiB, more than most last-level caches.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def device_bandwidth(device: Any, budget: float, nbytes: int) -> tuple[float, int]:
    """(median GB/s counting read+write, timed copies) for one device."""
    import torch

    gpu = device.type == "cuda"
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    sync = (lambda: torch.cuda.synchronize(device)) if gpu else (lambda: None)
    dst.copy_(src)  # warm-up
    sync()
    batch = 10 if gpu else 1
    samples = []
    deadline = time.perf_counter() + budget
    while not samples or (time.perf_counter() < deadline and len(samples) < 1000):
        sync()
        t0 = time.perf_counter()
        for _ in range(batch):
            dst.copy_(src)
        sync()
        samples.append((time.perf_counter() - t0) / batch)
    return 2 * nbytes / statistics.median(samples) / 1e9, len(samples) * batch


def copy_bandwidth(duration: float, progress: Callable[[str], None], nbytes: int | None = None) -> dict[str, Any]:
    """Measure every local device (GPUs, else the CPU) within `duration` seconds."""
    import torch

    if torch.cuda.is_available():
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        size = nbytes or 2**30
    else:
        devices = [torch.device("cpu")]
        size = nbytes or 2**28
    details, worst = {}, None
    for dev in devices:
        gbps, runs = device_bandwidth(dev, duration / len(devices), size)
        details[str(dev)] = {"gbps": round(gbps, 2), "bytes": size, "runs": runs}
        progress(f"  memory {dev}: copy {size / 2**20:.0f} MiB {gbps:.1f} GB/s (read+write, {runs} copies)")
        worst = gbps if worst is None else min(worst, gbps)
    return {"measured": {"memory_bw_gbps": round(worst, 2)}, "details": details}
