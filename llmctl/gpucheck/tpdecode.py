"""gpu-check's tp2 section: decode tokens/s of the serving section's model (Llama-3.2-1B
shape, the same seed and so the same random weights; tiny shapes with --cpu) split over 2
tensor-parallel ranks as `llmctl serve` runs them in tp mode: every rank keeps its shard
(llmctl.serve.tp.shard_model), rank 0 schedules and ships each step to the other
(tp.attach_leader / tp.worker_loop), and each row-parallel layer's partial sums are
all-reduced (llmctl.serve.allreduce: NCCL on GPUs, MPI on CPUs). 1 and 64 concurrent
requests, beside the serving section's one-rank figures.

The section starts `mpirun -n 2 python -m llmctl.gpucheck.tpdecode --out FILE [--cpu]`
with the MPI launcher on PATH ($MPIRUN names another), and reads FILE. It needs two GPUs
(skipped, with the reason, on one); with --cpu it runs two CPU ranks, so that CI
exercises the path. Open MPI's mpirun gets --oversubscribe, --bind-to none,
--allow-run-as-root when run as root, and -x for the variables the ranks need; an mpi4py
wheel that carries both ABIs is pointed at Open MPI's libmpi (MPI4PY_LIBMPI) when the
launcher is Open MPI. The engine runs in-process on the ranks, without HTTP (the server's
own path adds only the HTTP front end on rank 0).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

RANKS = 2
# Variables the ranks need, passed explicitly to Open MPI's ranks (-x; hydra passes all).
FORWARD = ("PYTHONPATH", "MPI4PY_LIBMPI", "OMP_NUM_THREADS", "LLMCTL_MPI_TIMEOUT_S", "CUDA_VISIBLE_DEVICES",
           "PATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV")


def find_launcher() -> Optional[tuple[str, str]]:
    """(path, flavour) of the MPI launcher: $MPIRUN, else `mpirun` on PATH, else `mpiexec`;
    flavour "openmpi", "mpich" or "other" from its --version."""
    path = os.environ.get("MPIRUN") or shutil.which("mpirun") or shutil.which("mpiexec")
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        text = out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    flavour = "openmpi" if "Open MPI" in text or "OpenRTE" in text else (
        "mpich" if "HYDRA" in text or "MPICH" in text else "other")
    return path, flavour


def launch_command(path: str, flavour: str, argv: list[str], env: dict[str, str]) -> list[str]:
    cmd = [path, "-n", str(RANKS)]
    if flavour == "openmpi":
        cmd += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        for var in FORWARD:
            if var in env:
                cmd += ["-x", var]
    return cmd + argv


def tp2(sec) -> None:
    import importlib.util

    import torch

    from llmctl.gpucheck.report import Skip

    ctx, res = sec.ctx, sec.results
    if not ctx.cpu and torch.cuda.device_count() < RANKS:
        raise Skip(f"{torch.cuda.device_count()} GPU: tensor-parallel decode needs {RANKS} or more")
    if importlib.util.find_spec("mpi4py") is None:
        raise Skip("mpi4py is not installed")
    found = find_launcher()
    if found is None:
        raise Skip("no mpirun or mpiexec on PATH (set $MPIRUN)")
    path, flavour = found
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("LLMCTL_MPI_TIMEOUT_S", "60")  # first steps include NCCL's and cuBLAS's set-up
    if flavour == "openmpi":
        env.setdefault("MPI4PY_LIBMPI", "libmpi.so.40")
    if ctx.cpu:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // RANKS))
    out = ctx.out / "tp2-ranks.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "llmctl.gpucheck.tpdecode", "--out", str(out)] + (["--cpu"] if ctx.cpu else [])
    cmd = launch_command(path, flavour, argv, env)
    sec.log(" ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=max(30.0, sec.left() + sec.budget_s * 0.4))
    except subprocess.TimeoutExpired:
        log = ""
        sec.skipped["tp2"] = f"the ranks ran past {sec.budget_s * 1.4:.0f} s"
    finally:  # also when the section's hard limit fires: no ranks left behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    got = json.loads(out.read_text()) if out.is_file() else {}
    if "error" in got or not got:
        tail = "\n".join((log or "").strip().splitlines()[-15:])
        raise RuntimeError(got.get("error") or f"{Path(path).name} exited with {proc.returncode}: {tail}")
    res.update(got, launcher={"path": path, "flavour": flavour})
    for n in (1, 64):
        one = ctx.shared.get(f"serve_decode_c{n}")
        if one and f"llmctl_tp2_c{n}" in res:
            res.setdefault("ratios", {})[f"tp2_over_tp1_c{n}"] = res[f"llmctl_tp2_c{n}"]["decode_tokens_per_s"] / one


def _ranks(out: Path, cpu: bool) -> int:
    """What each rank runs under mpirun."""
    import torch
    from mpi4py import MPI

    from llmctl.fsutil import atomic_write_text

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size != RANKS:
        lib = MPI.Get_library_version().strip().splitlines()[0]
        atomic_write_text(out, json.dumps({"error": f"{size} rank(s) in MPI_COMM_WORLD, expected {RANKS}: the "
                                                    f"launcher and mpi4py's MPI library ({lib}) differ?"}))
        return 3
    from llmctl.gpucheck.serving import CONCURRENCY, SHAPE, _prompts, engine_run, llama
    from llmctl.serve.allreduce import bind_local
    from llmctl.serve.engine import Engine
    from llmctl.serve.tp import attach_leader, shard_model, worker_loop

    bind_local(comm)  # a GPU per rank
    if cpu:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    s = SHAPE["cpu" if cpu else "gpu"]
    device = torch.device("cpu") if cpu else torch.device("cuda", torch.cuda.current_device())
    model = llama(s, device)
    shard_model(model, rank, size)
    n_max = max(CONCURRENCY)
    eng = Engine(model, eos_id=None, max_seqs=n_max, max_batch_tokens=max(8192, n_max * s["prompt"]),
                 prefix_caching=False)
    if rank > 0:
        with torch.inference_mode():
            worker_loop(comm, eng)
        _close_nccl()
        return 0
    res: dict[str, Any] = {"ranks": size}
    try:
        attach_leader(comm, eng)
        res["backend"] = eng.runner.reduce.backend
        res["paged_attention"] = eng.runner.attention
        t0 = time.monotonic()
        with torch.inference_mode():
            engine_run(model, _prompts(2, s)[:2], 4, engine=eng)  # warm-up
            for n in CONCURRENCY:
                res[f"llmctl_tp2_c{n}"] = engine_run(model, _prompts(n, s), s["new_tokens"], engine=eng)
        res["seconds"] = time.monotonic() - t0
    except Exception as e:
        import traceback

        traceback.print_exc()
        res = {"error": f"rank 0: {type(e).__name__}: {e}"}
    atomic_write_text(out, json.dumps(res))
    if getattr(eng, "mpi_leader", None) is not None:
        eng.mpi_leader.close()  # the worker's loop ends
    _close_nccl()
    return 0 if "error" not in res else 1


def _close_nccl() -> None:
    """The NCCL group (GPU ranks) goes before MPI finalizes: torch warns of one left open."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m llmctl.gpucheck.tpdecode", description=__doc__)
    ap.add_argument("--out", required=True, help="where rank 0 writes its figures (JSON)")
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on CPU ranks")
    args = ap.parse_args(argv)
    return _ranks(Path(args.out), args.cpu)


if __name__ == "__main__":
    sys.exit(main())
