"""Tensor-parallel serving over MPI: rank 0 leads, the other ranks follow.

Under `mpirun -n N` / `srun` (mpi4py importable, N > 1, `--mpi-mode tp`) every
rank loads the artifact and keeps its shard (Megatron-style, Shoeybi et al. 2019):
rank r holds heads [r·H/N, (r+1)·H/N) of wq/wk/wv and the matching columns of wo,
and a slice of the feed-forward width; embeddings, norms and the head are
replicated. Rank 0 runs HTTP and the scheduler; for each engine step it sends the
batch (token ids, positions, block tables) to every worker (MPI, point to point),
and after each row-parallel layer (wo, down/proj) all ranks sum their partial
outputs with one all-reduce (llmctl.serve.allreduce: MPI on CPU, NCCL on GPUs).

Every wait polls with a deadline (llmctl.serve.rankloss), so a dead rank makes
the step fail: the engine thread then fails all in-flight requests and /health
turns unhealthy. Between steps rank 0 pings the workers, so a rank dying while
idle is noticed within seconds too.
"""

from __future__ import annotations

import os
import socket
import time

from llmctl.errors import LlmctlError
from llmctl.serve.allreduce import AllReduce
from llmctl.serve.rankloss import (PEER_LOST, Incoming, RankLost, await_leader, pid_gone, remote_loss, wait,
                                   watch_local_pids)

PING_EVERY_S = 1.0
TAG_PLAN, TAG_PONG = 11, 12


def shard_model(model, rank: int, size: int) -> None:
    """Keep this rank's tensor-parallel slice of every block, in place."""
    import torch

    cfg = model.cfg
    for what, n in (("heads", cfg.heads), ("kv_heads", cfg.kv_heads), ("ffn", cfg.ffn)):
        if n % size:
            raise LlmctlError(f"tensor parallel over {size} ranks needs {what} ({n}) divisible by {size}")

    def rows(lin, lo, hi):
        lin.weight = torch.nn.Parameter(lin.weight[lo:hi].clone(), requires_grad=False)
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(lin.bias[lo:hi].clone(), requires_grad=False)

    def cols(lin, lo, hi):
        lin.weight = torch.nn.Parameter(lin.weight[:, lo:hi].clone(), requires_grad=False)
        if lin.bias is not None and rank > 0:  # a row-parallel bias is added once, by rank 0
            lin.bias = torch.nn.Parameter(torch.zeros_like(lin.bias), requires_grad=False)

    d = cfg.head_dim
    hq, hk, f = cfg.heads // size, cfg.kv_heads // size, cfg.ffn // size
    for blk in model.blocks:
        a = blk.attn
        rows(a.wq, rank * hq * d, (rank + 1) * hq * d)
        rows(a.wk, rank * hk * d, (rank + 1) * hk * d)
        rows(a.wv, rank * hk * d, (rank + 1) * hk * d)
        cols(a.wo, rank * hq * d, (rank + 1) * hq * d)
        a.heads, a.kv_heads = hq, hk
        m = blk.mlp
        for lin in ((m.gate, m.up) if m.swiglu else (m.fc,)):
            rows(lin, rank * f, (rank + 1) * f)
        cols(m.down if m.swiglu else m.proj, rank * f, (rank + 1) * f)


class _Chunk:
    """What a worker needs of a sequence to run its chunk."""

    def __init__(self, tokens, num_computed, blocks):
        self.tokens, self.num_computed, self.blocks = tokens, num_computed, blocks

    def token_at(self, i: int) -> int:
        return self.tokens[i]


class Leader:
    """Rank 0's side: ship each batch to the workers, then run it with them."""

    def __init__(self, comm, engine):
        self.comm, self.engine = comm, engine
        self.workers = list(range(1, comm.Get_size()))
        self.last_ping = time.monotonic()
        self.error = None
        self.host = socket.gethostname()
        engine.runner.reduce = AllReduce(comm, engine.runner.model.tok_emb.weight.device, self._wait_sum)
        self.ranks = comm.gather((self.host, os.getpid()), root=0)
        watch_local_pids(self.ranks)
        inner = engine.runner.forward

        def forward(chunks, **kw):
            plan = [(s.tokens[:s.num_computed + n], s.num_computed, list(s.blocks), n) for s, n in chunks]
            self._send_all(("step", plan))
            return inner(chunks, **kw)
        engine.runner.forward = forward

    def _alive(self) -> None:
        """Check worker processes on this host without MPI: once a peer is gone, MPICH's
        progress engine aborts the caller on the next operation that touches it."""
        for r, (host, pid) in enumerate(self.ranks):
            if r and host == self.host and pid_gone(pid):
                raise RankLost(f"rank {r} (pid {pid}) is gone")
        if PEER_LOST.is_set():  # on another host: the launcher said so (SIGUSR1, naming none)
            raise RankLost(remote_loss(self.ranks, self.host, self.workers))

    def _send_all(self, msg) -> None:
        if self.error:
            raise RankLost(self.error)
        self._alive()
        reqs = [self.comm.isend(msg, dest=r, tag=TAG_PLAN) for r in self.workers]
        for r, req in zip(self.workers, reqs):
            wait(req, f"sending to rank {r}", self._alive)

    def _wait_sum(self, req, what: str) -> None:
        """Rank 0 waits on a layer's all-reduce with a deadline; a lost rank fails the
        step, and no MPI call follows (the collective may still be pending)."""
        if self.error:
            raise RankLost(self.error)
        try:
            wait(req, what, self._alive)
        except RankLost as e:
            self.error = f"MPI rank lost: {e}"
            raise

    def check(self):
        """The engine thread's between-steps hook: ping the workers now and then."""
        if self.error:
            return self.error
        if time.monotonic() - self.last_ping < PING_EVERY_S:
            return None
        self.last_ping = time.monotonic()
        try:
            self._send_all(("ping", None))
            for r in self.workers:
                wait(Incoming(self.comm, r, TAG_PONG), f"ping of rank {r}", self._alive)
        except RankLost as e:
            self.error = f"MPI rank lost: {e}"
        return self.error

    def close(self) -> None:
        if self.error:
            # A peer is gone: MPI_Finalize would wait for it forever.
            os._exit(1)
        try:
            self._send_all(("stop", None))
        except RankLost:
            os._exit(1)


def attach_leader(comm, engine):
    """Make `engine` drive the workers; returns the health hook for EngineThread."""
    leader = Leader(comm, engine)
    engine.mpi_leader = leader
    engine.rank_pids = [pid for _, pid in leader.ranks]

    def hook():
        return leader.check()
    return hook


def worker_loop(comm, eng) -> None:
    """Ranks > 0: with `eng` around this rank's shard (shard_model), run every batch
    rank 0 sends until told to stop."""
    # no deadline here: a worker waits on rank 0 for as long as rank 0 lives (await_leader)
    device = eng.runner.model.tok_emb.weight.device
    eng.runner.reduce = AllReduce(comm, device, lambda req, _: await_leader(req))
    comm.gather((socket.gethostname(), os.getpid()), root=0)
    import torch

    while True:
        kind, plan = await_leader(Incoming(comm, 0, TAG_PLAN))
        if kind == "stop":
            return
        if kind == "ping":
            await_leader(comm.isend("pong", dest=0, tag=TAG_PONG))
            continue
        chunks = [(_Chunk(toks, c, blocks), n) for toks, c, blocks, n in plan]
        with torch.inference_mode():
            eng.runner.forward(chunks, logits=False)


def shutdown(engine) -> None:
    leader = getattr(engine, "mpi_leader", None)
    if leader is not None:
        leader.close()
