"""All-reduce and all-gather bus bandwidth over a size sweep, with nccl-tests' conventions.

Real torch.distributed processes: one per local GPU with NCCL, or N local CPU
processes with gloo, started with torch.multiprocessing.spawn on 127.0.0.1 and a
free port. For each size S (bytes of the whole buffer, as nccl-tests counts it;
for all-gather the gathered output):

    algbw = S / t
    busbw = algbw * 2(n-1)/n   (all-reduce)     busbw = algbw * (n-1)/n   (all-gather)

(nccl-tests, doc/PERFORMANCE.md). `t` is the slowest rank's mean time per call.
The profile keeps the peak busbw of each collective.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from typing import Any, Callable

from llmctl.errors import LlmctlError

OPS = ("all_reduce", "all_gather")



def _sig(x: float, digits: int = 4) -> float:
    """Round to significant digits: a slow link's 0.00285 GB/s must not become 0.0028."""
    return float(f"{x:.{digits}g}")

def bus_factor(op: str, n: int) -> float:
    """nccl-tests' factor from algorithm to bus bandwidth for `n` ranks."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op == "all_gather":
        return (n - 1) / n
    raise ValueError(f"unknown collective {op!r}")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_sizes(backend: str) -> list[int]:
    """1 KiB .. 16 MiB (gloo) or 1 MiB .. 1 GiB (NCCL), ×4 steps."""
    lo, hi = (2**10, 2**24) if backend == "gloo" else (2**20, 2**30)
    sizes, s = [], lo
    while s <= hi:
        sizes.append(s)
        s *= 4
    return sizes


def _worker(rank: int, world: int, port: int, backend: str, sizes: list[int], duration: float, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)  # n processes share the cores; do not oversubscribe
        device = torch.device("cpu")
    dist.init_process_group(backend, rank=rank, world_size=world)
    sync = (lambda: torch.cuda.synchronize(device)) if backend == "nccl" else (lambda: None)
    rows = []
    budget = duration / (len(OPS) * len(sizes))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    start = time.perf_counter()
    try:
        for op_index, op in enumerate(OPS):
            op_deadline = duration * (op_index + 1) / len(OPS)  # each collective gets its share
            for size in sizes:
                elems = max(world, size // 4 // world * world)  # float32, divisible by the ranks
                if op == "all_reduce":
                    buf = torch.ones(elems, device=device)
                    call = lambda: dist.all_reduce(buf)  # noqa: E731
                else:
                    out_t = torch.empty(elems, device=device)
                    inp = torch.ones(elems // world, device=device)
                    call = lambda: gather(out_t, inp)  # noqa: E731
                call()  # warm-up (also builds the communicator)
                sync()
                # Run in chunks; after each, rank 0 says whether to go on, so every rank makes
                # the same number of calls and the size keeps to its share of --duration.
                ctl = torch.zeros(2, device=device)  # [go-on flag, next chunk], decided by rank 0
                k, spent = 0, 0.0
                chunk = 1
                while True:
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(chunk):
                        call()
                    sync()
                    dt = time.perf_counter() - t0
                    spent += dt
                    k += chunk
                    if rank == 0:
                        now = time.perf_counter() - start
                        # 1: go on; 0: next size; -1: this collective's share is spent, skip larger sizes
                        ctl[0] = -1.0 if now >= op_deadline else 1.0 if spent < budget and k < 10000 else 0.0
                        ctl[1] = max(1, min(1000, int(0.2 * budget / (dt / chunk))))  # ~5 checks per size
                    dist.broadcast(ctl, 0)
                    flag, chunk = float(ctl[0].item()), int(ctl[1].item())
                    if flag != 1.0:
                        break
                elapsed = torch.tensor([spent / k], device=device, dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                t = float(elapsed.item())
                nbytes = elems * 4
                algbw = nbytes / t / 1e9
                row = {"op": op, "bytes": nbytes, "iters": k, "time_us": round(t * 1e6, 2),
                       "algbw_gbps": _sig(algbw), "busbw_gbps": _sig(algbw * bus_factor(op, world))}
                rows.append(row)
                if rank == 0:
                    print(f"  comm {backend} x{world} {op:<10} {nbytes:>11} B  {row['time_us']:>10.1f} us  "
                          f"algbw {row['algbw_gbps']:8.3f} GB/s  busbw {row['busbw_gbps']:8.3f} GB/s",
                          file=sys.stderr, flush=True)
                if flag == -1.0:
                    break
        if rank == 0:
            with open(out, "w", encoding="utf-8") as f:
                json.dump(rows, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def collectives(duration: float, progress: Callable[[str], None], nprocs: int | None = None,
                sizes: list[int] | None = None, backend: str | None = None) -> dict[str, Any]:
    """Run the sweep in real processes; returns peak busbw per collective and every row."""
    import torch
    import torch.multiprocessing as mp

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = backend or ("nccl" if gpus >= 2 else "gloo")
    n = nprocs or (gpus if backend == "nccl" else 2)
    if n < 2:
        raise LlmctlError(f"a collective needs at least 2 processes, got {n}")
    if backend == "nccl" and n > gpus:
        raise LlmctlError(f"NCCL runs one process per GPU: asked for {n}, this node has {gpus}")
    sizes = sizes or default_sizes(backend)
    progress(f"  comm: {n} {backend} processes, {len(sizes)} sizes x {len(OPS)} collectives")
    fd, out = tempfile.mkstemp(prefix="llmctl-comm-", suffix=".json")
    os.close(fd)
    try:
        mp.spawn(_worker, args=(n, free_port(), backend, sizes, duration, out), nprocs=n, join=True)
        with open(out, encoding="utf-8") as f:
            rows = json.load(f)
    except mp.ProcessRaisedException as e:
        raise LlmctlError(f"the {backend} benchmark processes failed: {str(e).strip().splitlines()[-1]}") from e
    finally:
        os.unlink(out)
    measured = {}
    for op in OPS:
        best = max((r["busbw_gbps"] for r in rows if r["op"] == op), default=None)
        if best is not None:
            measured[f"{op.replace('_', '')}_busbw_gbps"] = best
    return {"measured": measured, "details": {"backend": backend, "processes": n, "rows": rows}}
