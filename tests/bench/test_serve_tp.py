"""Tensor-parallel serving on CPU, two figures.

- Decode speed: the server under `mpiexec -n TP` (MPICH from the venv), greedy
  decoding of a small random llama (4 layers, hidden 256, 8 heads, 4 KV heads, ffn
  768), 1 and 8 requests in flight; decode tokens/s (completion tokens over wall
  time, after a warm-up request). The partial sums are reduced after every
  row-parallel layer, so at this size the figure is mostly the reduction's latency.
- The reduction alone: microseconds per reduction of an (8, 256) fp32 tensor (one
  decode step of 8 rows at hidden 256), llmctl's all-reduce (llmctl.serve.allreduce)
  beside the star through rank 0 it replaced (kept here as the reference), with the
  same polling waits, alternated over several rounds; medians.

    .venv/bin/python -m pytest -q tests/bench/test_serve_tp.py --benchmark-enable -s

Run with `make bench`; not a pass/fail gate on speed. On a 2-core machine tp=4
runs four ranks on two cores: read it as the cost of the data plane, not a speed-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

httpx = pytest.importorskip("httpx")
MPIEXEC = Path(sys.executable).parent / "mpiexec"
SMALL_LLAMA = {"name": "small-llama", "template": "llama", "layers": 4, "hidden": 256, "ffn": 768, "heads": 8,
               "kv_heads": 4, "vocab_size": 384, "max_seq_len": 256}
NEW_TOKENS = 96


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"), SMALL_LLAMA, name="small")


def decode(url: str, in_flight: int) -> dict:
    """`in_flight` greedy requests at once; decode tokens/s over the whole batch."""
    def one(i: int) -> int:
        r = httpx.post(url + "/v1/completions", timeout=300, json={
            "prompt": f"def f{i}(x):", "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True})
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    one(0)  # warm-up: first-call allocations, the KV cache
    t0 = time.monotonic()
    with ThreadPoolExecutor(in_flight) as pool:
        tokens = sum(pool.map(one, range(in_flight)))
    wall = time.monotonic() - t0
    return {"tokens": tokens, "seconds": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)}


@pytest.mark.parametrize("in_flight", [1, 8])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_serve_tp_decode(benchmark, artifact, tp, in_flight):
    if tp > 1 and not MPIEXEC.exists():
        pytest.skip("no mpiexec in the venv (pip install mpich mpi4py)")
    cmd = [str(MPIEXEC), "-disable-auto-cleanup", "-n", str(tp)] if tp > 1 else None
    with K.Server(artifact, env={"LLMCTL_MPI_TIMEOUT_S": "30"}, cmd=cmd) as s:
        s.wait(180)
        stats = benchmark.pedantic(decode, args=(s.url, in_flight), rounds=1, iterations=1)
    benchmark.extra_info.update(stats, tp=tp, in_flight=in_flight)
    print(f"\ntp={tp} in_flight={in_flight}: {stats}")
    assert stats["tokens"] == in_flight * NEW_TOKENS


REDUCE = textwrap.dedent("""
    import json, statistics, sys, time
    import numpy as np, torch
    from mpi4py import MPI
    from llmctl.serve import rankloss
    from llmctl.serve.allreduce import AllReduce, bind_local

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    bind_local(comm)
    waiter = ((lambda req, what: rankloss.wait(req, what)) if rank == 0
              else (lambda req, what: rankloss.await_leader(req)))

    def star(t):  # the reference: every part to rank 0, the total back (llmctl before the all-reduce)
        if rank == 0:
            total = t.detach().float().cpu().numpy().copy()
            bufs = {r: np.empty_like(total) for r in range(1, size)}
            reqs = {r: comm.Irecv(bufs[r], source=r, tag=12) for r in bufs}
            for r in bufs:
                rankloss.wait(reqs[r], "part")
                total += bufs[r]
            for req in [comm.Isend(total, dest=r, tag=13) for r in bufs]:
                rankloss.wait(req, "sum")
            return torch.from_numpy(total).to(t.dtype)
        part = t.detach().float().cpu().numpy().copy()
        rankloss.await_leader(comm.Isend(part, dest=0, tag=12))
        total = np.empty_like(part)
        rankloss.await_leader(comm.Irecv(total, source=0, tag=13))
        return torch.from_numpy(total).to(t.dtype)

    fns = {"star": star, "allreduce": AllReduce(comm, torch.device("cpu"), waiter)}
    n = int(sys.argv[1])
    times = {k: [] for k in fns}
    for _ in range(5):
        for name, fn in fns.items():
            ts = [torch.ones(8, 256) for _ in range(n)]
            for t in ts[:20]:
                fn(t.clone())
            comm.Barrier()
            t0 = time.perf_counter()
            for t in ts:
                fn(t)
            comm.Barrier()
            times[name].append((time.perf_counter() - t0) / n * 1e6)
    if rank == 0:
        print(json.dumps({k: round(statistics.median(v), 1) for k, v in times.items()}
                         | {"spin_us": rankloss.SPIN_S * 1e6}))
""")


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_reduce_latency(benchmark, tmp_path, tp):
    if not MPIEXEC.exists():
        pytest.skip("no mpiexec in the venv (pip install mpich mpi4py)")
    script = tmp_path / "reduce.py"
    script.write_text(REDUCE)

    def run():
        p = subprocess.run([str(MPIEXEC), "-n", str(tp), sys.executable, str(script), "300"],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])

    stats = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(stats, tp=tp)
    print(f"\ntp={tp} microseconds per reduction (median of 5 x 300): {stats}")
    assert stats["star"] > 0 and stats["allreduce"] > 0
