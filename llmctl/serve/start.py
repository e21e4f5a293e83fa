"""`llmctl serve start`: load the artifact, start the engine thread, run uvicorn.

Under MPI (more than one rank), rank 0 does all of this and the other ranks run
`llmctl.serve.tp.worker_loop` (or `llmctl.serve.dp.replica_loop`) around the engine
built here. When $LLMCTL_RUN_DIR is set (a job), the bound host and port go to
RUN/endpoint.json for discovery, removed at shutdown. On one rank a failed engine
is rebuilt in-process (llmctl.serve.restart); a server that gives up exits with
status 2.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from llmctl.errors import LlmctlError


def extra_rank() -> bool:
    """True in the 2nd..Nth process that torchrun or srun started without MPI: the
    batch job and the server run once (on rank 0); MPI ranks are handled by serve.tp/dp."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "0") not in ("", "0"):
            return True
    return False


def api_key(settings) -> str | None:
    if not settings.api_key_env:
        return None
    key = os.environ.get(settings.api_key_env)
    if not key:
        raise LlmctlError(f"--api-key-env {settings.api_key_env}: the variable is not set or empty",
                          hint=f"export {settings.api_key_env}=... before starting the server")
    return key


def build_engine(settings, artifact_path: str, shard: tuple[int, int] | None = None):
    """(artifact, engine); with `shard` = (rank, size) the model keeps its tensor-parallel slice."""
    from llmctl.export.hf import load_artifact

    if getattr(settings, "compile", False) and shard is not None and shard[1] > 1:
        raise LlmctlError(f"compile = true is not supported with {shard[1]} tensor-parallel ranks",
                          hint='set compile = false, or mpi_mode = "dp" (whole replicas)')
    device = _device()
    dtype = settings.dtype if settings.dtype != "auto" else auto_dtype(device)
    art = load_artifact(artifact_path, dtype=dtype, device=device)
    if shard is not None:
        from llmctl.serve.tp import shard_model

        shard_model(art.model, *shard)
    return art, engine_for(art, settings)


def engine_for(art, settings):
    """A new engine around `art`'s loaded weights (also what a restart builds)."""
    from llmctl.serve import testhooks
    from llmctl.serve.engine import Engine

    eng = Engine.from_artifact(art, scheduler=settings.scheduler, max_batch_tokens=settings.max_batch_tokens,
                               block_size=settings.kv_block_size, num_blocks=settings.kv_blocks,
                               prefix_caching=settings.prefix_caching,
                               compile=getattr(settings, "compile", False),
                               paged_attention=getattr(settings, "paged_attention", "auto"))
    if testhooks.enabled():
        testhooks.install(eng)
    return eng


def auto_dtype(device: str) -> str:
    """`dtype = "auto"`: bf16 on a GPU (a decode step reads every weight: half fp32's bytes),
    fp32 on a CPU (where bf16 matmuls are slower on most CPUs)."""
    return "bf16" if device.startswith("cuda") else "fp32"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def serve(settings, resolved: dict | None = None) -> None:
    """Serve `settings` (a ServeConfig); `resolved`: where each came from (llmctl.serve.resolved),
    printed by rank 0 and, in a job, written to RUN/serve-resolved.json."""
    from llmctl.serve import rankloss

    artifact = settings.artifact
    if not artifact or not Path(artifact).is_dir():
        raise LlmctlError(f"--artifact {artifact}: artifact folder not found")
    key = api_key(settings)
    supervised = rankloss.supervise_rank()  # under hydra: the MPI work runs in a child
    if supervised is not None:
        raise SystemExit(supervised)
    world = rankloss.world()
    if world is None and extra_rank():
        print("llmctl serve: not rank 0 and not under MPI: nothing to do on this rank", flush=True)
        return
    if world is not None:
        rankloss.survive_rank_loss(world)  # a killed peer must not take this rank down with it
        from llmctl.serve.allreduce import bind_local

        bind_local(world)  # one GPU per rank of a node, before any loads; spin or sleep in waits
    dp = world is not None and settings.mpi_mode == "dp"
    from llmctl.hw import threads

    n_threads, why = threads.apply(getattr(settings, "threads", None), "the serve config's threads")
    print(f"llmctl serve: {n_threads} torch threads ({why})", flush=True)
    shard = (world.Get_rank(), world.Get_size()) if world is not None and not dp else None
    if world is not None and world.Get_rank() > 0:
        _, eng = build_engine(settings, artifact, shard=shard)
        if dp:
            from llmctl.serve.dp import replica_loop

            return replica_loop(world, eng)
        from llmctl.serve.tp import worker_loop

        return worker_loop(world, eng)
    from llmctl.serve.resolved import announce

    announce(resolved, os.environ.get("LLMCTL_RUN_DIR"))
    # Loading a large artifact takes a while: say so, so that a silent log is not mistaken for a hang.
    print(f"llmctl serve: loading {artifact} ...", flush=True)
    t0 = time.monotonic()
    art, eng = build_engine(settings, artifact, shard=shard)
    print(f"llmctl serve: loaded {art.name} in {time.monotonic() - t0:.1f} s", flush=True)
    if dp:
        from llmctl.serve.dp import Router

        worker = Router(world, eng).start()
    else:
        from llmctl.serve import tp
        from llmctl.serve.worker import EngineThread

        hook = tp.attach_leader(world, eng) if world is not None else None
        worker = EngineThread(eng, step_hook=hook).start()
    _run_http(settings, art, eng, worker, key, restartable=world is None)  # stops MPI workers at shutdown


def _run_http(settings, art, eng, worker, key, restartable: bool) -> None:
    import uvicorn

    from llmctl.fsutil import atomic_write_text
    from llmctl.jobs.rundir import RunDir
    from llmctl.serve import httpconn, testhooks, tp
    from llmctl.serve.server import ServerState, build_app

    timeouts = httpconn.Timeouts.from_env()
    state = ServerState(worker, art.name, settings, key, test_hooks=testhooks.enabled(), timeouts=timeouts)
    if state.test_hooks:
        print(f"llmctl serve: {testhooks.ENV} is set: test hooks are on; never in production", flush=True)
    cleanups = []
    restarter = None
    if restartable:  # one rank: a failed engine is rebuilt here (llmctl.serve.restart)
        from llmctl.serve.restart import Restarter
        from llmctl.serve.worker import EngineThread

        def give_up():
            server.should_exit = True

        restarter = Restarter(state, lambda: EngineThread(engine_for(art, settings)).start(), give_up)
        state.restarter = restarter
        cleanups.append(restarter.stop)  # first: no restart while shutting down
    cleanups.append(lambda: state.worker.shutdown())
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP, and without it every response on a kept-alive connection waited 40 ms for
    # the client's delayed ACK (Nagle: uvicorn writes the head and the body separately).
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as e:
        raise LlmctlError(f"cannot bind {settings.host}:{settings.port}: {e.strerror}") from None
    port = sock.getsockname()[1]
    endpoint = None
    if os.environ.get("LLMCTL_RUN_DIR"):
        endpoint = RunDir(os.environ["LLMCTL_RUN_DIR"]).endpoint_file
        host = socket.getfqdn() if settings.host in ("0.0.0.0", "::") else settings.host
        atomic_write_text(endpoint, json.dumps({"host": host, "port": port, "pid": os.getpid(),
                                                "url": f"http://{host}:{port}/v1"}) + "\n")
        cleanups.append(lambda: endpoint.unlink(missing_ok=True))
    # Last: tell the MPI workers to stop (no-op on one rank); after a lost rank it exits at once.
    cleanups.append(getattr(worker, "close", None) or (lambda: tp.shutdown(eng)))
    # uvicorn re-raises the signal once it has shut down (the exit status says SIGTERM): the
    # last word is said here.
    cleanups.append(lambda: print("llmctl serve: stopped", flush=True))
    app = build_app(state, on_shutdown=cleanups)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5,
                            timeout_keep_alive=timeouts.idle_s, http=httpconn.protocol(timeouts))
    server = uvicorn.Server(config)
    stop_requested = server.handle_exit

    def handle_exit(sig, frame):  # uvicorn installs self.handle_exit for SIGINT and SIGTERM
        if not server.should_exit:
            print(f"llmctl serve: {signal.Signals(sig).name} received: finishing the requests in flight, "
                  "then stopping", flush=True)
        stop_requested(sig, frame)

    server.handle_exit = handle_exit
    print(f"llmctl serve: {art.name} on http://{settings.host}:{port}/v1 "
          f"(scheduler {settings.scheduler})", flush=True)
    pids = getattr(state.engine, "rank_pids", None) or []
    for rank, host in enumerate(state.rank_hosts()):  # where each MPI rank runs (several nodes)
        print(f"llmctl serve: rank {rank} of {len(pids)} on {host} (pid {pids[rank]})", flush=True)
    if restarter is not None:
        restarter.start()
    server.run(sockets=[sock])
    if restarter is not None and restarter.gave_up:
        raise LlmctlError(f"the server stopped: {restarter.gave_up}",
                          hint="check the GPU and the artifact, then start the server again")
