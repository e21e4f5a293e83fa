"""MPI-coordinated tensor-parallel workers.

Under `mpirun -n N` / `srun` (mpi4py importable, N > 1) every rank loads the
artifact and keeps its shard (Megatron-style, Shoeybi et al. 2019): rank r holds
heads [r·H/N, (r+1)·H/N) of wq/wk/wv and the matching columns of wo, and a slice
of the feed-forward width; embeddings, norms and the head are replicated. Rank 0
runs HTTP and the scheduler; for each engine step it sends the batch (token
ids, positions, block tables) to every worker, and after each row-parallel layer
(wo, down/proj) the partial sums go to rank 0, which adds them and sends the
total back.

Every wait on rank 0 polls with a deadline (`TIMEOUT_S`) instead of blocking, so
a dead rank makes the step fail: the engine thread then fails all in-flight
requests and /health turns unhealthy. Between steps rank 0 pings the workers, so
a rank dying while idle is noticed within seconds too.

Surviving a killed rank, under MPICH's hydra (seen on pip MPICH 5.0.2):
`-disable-auto-cleanup` is needed, else the launcher kills every rank at once,
and even then four things still kill the survivors. (1) Hydra's proxy reaps its
children after every event it handles, and one that died *by a signal* makes it
SIGKILL all its other children, whatever the flag says: so each rank's MPI work
runs in a child of a small supervisor process (`supervise_rank`) that exits
normally whatever happened to the child. (2) Hydra tells the others with SIGUSR1,
whose default action ends a process: each rank handles it (it sets PEER_LOST).
(3) MPI_ERRORS_ARE_FATAL on COMM_WORLD aborts the job when MPICH learns of the
failed peer: errors are returned instead. (4) Output that reaches hydra after the
death is such an event: a relay thread carries the rank's stdout/stderr and,
once a peer is lost, writes it to a log file instead. Open MPI needs
`--enable-recovery` instead.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from llmctl.errors import LlmctlError

_RANK_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
TIMEOUT_S = float(os.environ.get("LLMCTL_MPI_TIMEOUT_S", "5"))
PING_EVERY_S = 1.0
TAG_PLAN, TAG_PART, TAG_SUM = 11, 12, 13


# Set when the launcher reports that some rank died (hydra's SIGUSR1).
PEER_LOST = threading.Event()


class RankLost(RuntimeError):
    pass


def supervise_rank() -> int | None:
    """Under hydra with several ranks, run this very command again as a child and
    return its exit status (the caller exits with it); None in the child, or when
    there is nothing to supervise. A child killed by a signal becomes an ordinary
    exit status 128+N here, so hydra never sees a rank die by a signal (see above).
    """
    if ("PMI_FD" not in os.environ or os.environ.get("LLMCTL_RANK_CHILD")
            or int(os.environ.get("PMI_SIZE", "1")) < 2):
        return None
    import subprocess
    import sys

    # Hydra signals whole process groups (the child is in ours): no forwarding, else
    # a SIGTERM would reach the server twice and force an unclean exit.
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    child = subprocess.Popen(sys.orig_argv, env=dict(os.environ, LLMCTL_RANK_CHILD="1"),
                             pass_fds=(int(os.environ["PMI_FD"]),),
                             preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL)
                                                 for s in (signal.SIGTERM, signal.SIGINT)])
    code = child.wait()
    return 128 - code if code < 0 else code


def survive_rank_loss(comm) -> None:
    """Keep this rank alive and quiet on hydra's pipes when another rank dies (see above)."""
    from mpi4py import MPI

    comm.Set_errhandler(MPI.ERRORS_RETURN)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, lambda *_: PEER_LOST.set())
    OutputGuard(comm.Get_rank()).install()


class OutputGuard:
    """Relay fd 1 and 2 through pipes; after a lost peer, into a log file instead."""

    def __init__(self, rank: int):
        self.rank = rank
        self.lock = threading.Lock()
        self.fallback = None
        self.local_pids: list[int] = []  # peers on this host: checked before each write

    def install(self) -> None:
        for fd in (1, 2):
            try:
                os.fstat(fd)
            except OSError:
                continue
            r, w = os.pipe()
            out = os.dup(fd)
            os.dup2(w, fd)
            os.close(w)
            threading.Thread(target=self._relay, args=(r, out), daemon=True,
                             name=f"llmctl-output-{fd}").start()
        global _GUARD
        _GUARD = self

    def _lost(self) -> bool:
        if PEER_LOST.is_set():
            return True
        for pid in self.local_pids:  # SIGUSR1 reaches Python's handler late (main thread only)
            if pid_gone(pid):
                PEER_LOST.set()
                return True
        return False

    def _relay(self, r: int, out: int) -> None:
        while True:
            data = os.read(r, 65536)
            if not data:
                return
            with self.lock:
                if not self._lost():
                    os.write(out, data)
                    continue
                if self.fallback is None:
                    self.fallback = open(self._fallback_path(), "ab", buffering=0)
                self.fallback.write(data)

    def _fallback_path(self) -> Path:
        run = os.environ.get("LLMCTL_RUN_DIR")
        folder = Path(run) / "logs" if run else Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"llmctl-serve-rank{self.rank}-{os.getpid()}.log"


_GUARD: "OutputGuard | None" = None


def pid_gone(pid: int) -> bool:
    """True once `pid` is dead, zombies included: a killed rank stays a zombie until
    hydra reaps it, and os.kill(pid, 0) still succeeds on a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (or it just went): trust os.kill
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def watch_local_pids(ranks) -> None:
    """Tell the output guard which peers share this host ([(host, pid)] by rank)."""
    if _GUARD is not None:
        here = socket.gethostname()
        _GUARD.local_pids = [pid for host, pid in ranks if host == here and pid != os.getpid()]


def world():
    """MPI.COMM_WORLD when running as one of several MPI ranks, else None."""
    if not any(v in os.environ for v in _RANK_VARS):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _wait(req, what: str, lost_peer=None):
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            done, value = req.test()
        except Exception as e:  # MPI reports the failed peer
            raise RankLost(f"{what}: {e}") from None
        if done:
            return value
        if PEER_LOST.is_set() and lost_peer is not None:
            lost_peer()
        if time.monotonic() > deadline:
            raise RankLost(f"{what}: no answer in {TIMEOUT_S:.0f} s (rank dead?)")
        time.sleep(0.0002)


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
    """Rank 0's side: ship each batch to the workers, add the partial sums."""

    def __init__(self, comm, engine):
        self.comm, self.engine = comm, engine
        self.workers = list(range(1, comm.Get_size()))
        self.last_ping = time.monotonic()
        self.error = None
        self.host = socket.gethostname()
        self.ranks = comm.gather((self.host, os.getpid()), root=0)
        watch_local_pids(self.ranks)
        engine.runner.reduce = self.reduce
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
        if PEER_LOST.is_set():  # on another host: the launcher said so (SIGUSR1)
            raise RankLost("the MPI launcher reports that a rank died")

    def _send_all(self, msg) -> None:
        if self.error:
            raise RankLost(self.error)
        self._alive()
        reqs = [self.comm.isend(msg, dest=r, tag=TAG_PLAN) for r in self.workers]
        for r, req in zip(self.workers, reqs):
            _wait(req, f"sending to rank {r}", self._alive)

    def reduce(self, t):
        import numpy as np
        import torch

        total = t.detach().float().cpu().numpy().copy()
        bufs = {r: np.empty_like(total) for r in self.workers}
        reqs = {r: self.comm.Irecv(bufs[r], source=r, tag=TAG_PART) for r in self.workers}
        for r in self.workers:  # in rank order: every rank adds in the same order
            _wait(reqs[r], f"partial sum from rank {r}", self._alive)
            total += bufs[r]
        self._alive()
        sends = [self.comm.Isend(total, dest=r, tag=TAG_SUM) for r in self.workers]
        for r, req in zip(self.workers, sends):
            _wait(req, f"sum to rank {r}", self._alive)
        return torch.from_numpy(total).to(t.dtype)

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
                _wait(_Incoming(self.comm, r, TAG_PART), f"ping of rank {r}", self._alive)
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


def await_leader(req):
    """A worker's wait on rank 0: polls, so a lost peer (SIGUSR1) ends the rank instead
    of leaving it blocked forever in a receive that will never complete."""
    idle_since = time.monotonic()
    while True:
        done, value = req.test()
        if done:
            return value
        if PEER_LOST.is_set():
            os._exit(1)  # not MPI_Finalize: it would wait for the dead rank
        # Spin briefly (a step's messages come back to back), then back off.
        time.sleep(0.0002 if time.monotonic() - idle_since < 0.1 else 0.002)


class _Incoming:
    """A pickled message of any size, received without blocking (a matched probe, then
    a nonblocking receive): it quacks like a Request for `await_leader`."""

    def __init__(self, comm, source: int, tag: int):
        self.comm, self.source, self.tag, self.req = comm, source, tag, None

    def test(self):
        if self.req is None:
            msg = self.comm.improbe(source=self.source, tag=self.tag)
            if msg is None:
                return False, None
            self.req = msg.irecv()
        return self.req.test()


def worker_loop(comm, settings, artifact) -> None:
    """Ranks > 0: load the shard, then run every batch rank 0 sends until told to stop."""
    from llmctl.serve.start import build_engine

    _, eng = build_engine(settings, artifact, shard=(comm.Get_rank(), comm.Get_size()))

    def reduce(t):
        import numpy as np
        import torch

        part = t.detach().float().cpu().numpy().copy()
        await_leader(comm.Isend(part, dest=0, tag=TAG_PART))
        total = np.empty_like(part)
        await_leader(comm.Irecv(total, source=0, tag=TAG_SUM))
        return torch.from_numpy(total).to(t.dtype)

    eng.runner.reduce = reduce
    comm.gather((socket.gethostname(), os.getpid()), root=0)
    import torch

    while True:
        kind, plan = await_leader(_Incoming(comm, 0, TAG_PLAN))
        if kind == "stop":
            return
        if kind == "ping":
            await_leader(comm.isend("pong", dest=0, tag=TAG_PART))
            continue
        chunks = [(_Chunk(toks, c, blocks), n) for toks, c, blocks, n in plan]
        with torch.inference_mode():
            eng.runner.forward(chunks, logits=False)


def shutdown(engine) -> None:
    leader = getattr(engine, "mpi_leader", None)
    if leader is not None:
        leader.close()
