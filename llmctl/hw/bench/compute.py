"""Dense matmul rate per dtype and device: the FLOP/s a training step can hope for.

An n×n by n×n matmul is 2n³ FLOPs (one multiply and one add per term). GPUs use
8192³ (big enough to fill an H100; smaller sizes under-report, see the h100-x1
fixture's README: 631 vs 729 TFLOP/s at 4096 vs 8192); a CPU starts at 1024³ and
halves the size until one matmul fits the time budget. The result per dtype is the
median of the timed runs after one warm-up, and the slowest device's figure.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

DTYPES = ("bf16", "fp16", "fp32")


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(device: Any, dtype: Any, budget: float, size: int | None = None) -> tuple[float, int, int]:
    """(median TFLOP/s, matrix size, timed runs) for one device and dtype within `budget` seconds."""
    import torch

    gpu = device.type == "cuda"
    n = size or (8192 if gpu else 1024)
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        t0 = time.perf_counter()
        torch.matmul(a, b)  # warm-up: kernels selected, caches and clocks up
        _sync(torch, device)
        first = time.perf_counter() - t0
        if gpu or size or first <= budget / 5 or n <= 128:
            break
        n //= 2
    # On a GPU, time a batch of matmuls between syncs so launch latency does not count.
    batch = max(1, min(50, int(0.05 / max(first, 1e-6)))) if gpu else 1
    samples = []
    deadline = time.perf_counter() + budget
    while not samples or (time.perf_counter() < deadline and len(samples) < 1000):
        _sync(torch, device)
        t0 = time.perf_counter()
        for _ in range(batch):
            torch.matmul(a, b)
        _sync(torch, device)
        samples.append(time.perf_counter() - t0)
    per = statistics.median(samples) / batch
    return 2 * n**3 / per / 1e12, n, len(samples) * batch


def matmul(duration: float, progress: Callable[[str], None], dtypes: tuple[str, ...] = DTYPES,
           size: int | None = None) -> dict[str, Any]:
    """Measure every dtype on every local device within `duration` seconds in total."""
    import torch

    torch_dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if torch.cuda.is_available():
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        # tf32 would make "fp32" a tensor-core figure; we want true fp32 here.
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        devices = [torch.device("cpu")]
    budget = duration / (len(devices) * len(dtypes))
    details: dict[str, Any] = {}
    measured: dict[str, float] = {}
    for dev in devices:
        for name in dtypes:
            tflops, n, runs = rate(dev, torch_dtypes[name], budget, size)
            details.setdefault(str(dev), {})[name] = {"tflops": round(tflops, 4), "n": n, "runs": runs}
            progress(f"  compute {dev} {name}: {n}^3 matmul {tflops:.3f} TFLOP/s ({runs} runs)")
            key = f"matmul_tflops_{name}"
            measured[key] = round(min(measured.get(key, tflops), tflops), 4)
    return {"measured": measured, "details": details}
