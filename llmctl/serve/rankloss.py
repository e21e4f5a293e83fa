"""Keeping an MPI serve rank alive, and never blocked, when a peer dies.

Shared by tensor-parallel (llmctl.serve.tp) and data-parallel (llmctl.serve.dp)
serving: `world()` says whether this process is one of several MPI ranks; every
wait on a peer polls a request with a deadline (`wait`, `TIMEOUT_S`, also
$LLMCTL_MPI_TIMEOUT_S) or, on a worker, until the launcher reports a lost peer
(`await_leader`), instead of blocking in MPI. A dead rank thus makes a step fail
(rank 0's engine then fails the requests in flight and /health turns unhealthy)
rather than hang.

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
SPIN_S = 0.0  # see set_spin


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


def remote_loss(ranks, host: str, candidates) -> str:
    """What to say when the launcher reports a lost rank (hydra's SIGUSR1, which names
    none) and every rank on this host is still running: the lost one is among the
    `candidates` on other hosts. With one such rank (one per node) that names it exactly;
    with several, it names them and their hosts, never more than can be known."""
    remote = [r for r in sorted(candidates) if ranks[r][0] != host]
    if len(remote) == 1:
        r = remote[0]
        return (f"rank {r} on {ranks[r][0]} (pid {ranks[r][1]}) is lost: the MPI launcher reports "
                f"that a rank died, and every rank on {host} is running")
    hosts = sorted({ranks[r][0] for r in remote})
    return (f"one of ranks {', '.join(map(str, remote))} on {', '.join(hosts)} is lost: the MPI launcher "
            f"reports that a rank died, and every rank on {host} is running")


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


def set_spin(local_ranks: int) -> float:
    """How long each wait polls without sleeping (SPIN_S): a collective's rounds then
    cost microseconds instead of one sleep each. Only while every rank on this node
    has a CPU of its own: oversubscribed, a spinning rank takes the CPU its peers need
    (4 ranks on 2 cores: 3 to 5 times slower per all-reduce). $LLMCTL_MPI_SPIN_US
    sets it instead."""
    global SPIN_S
    given = os.environ.get("LLMCTL_MPI_SPIN_US", "").strip()
    if given:
        try:
            SPIN_S = float(given) / 1e6
        except ValueError:
            SPIN_S = -1.0
        if not 0 <= SPIN_S <= 1:
            raise LlmctlError(f"LLMCTL_MPI_SPIN_US={given!r}: not a number of microseconds from 0 to 1000000")
    else:
        SPIN_S = 0.001 if local_ranks <= len(os.sched_getaffinity(0)) else 0.0
    return SPIN_S


def _pause(since: float) -> None:
    """Between two polls: yield the CPU while spinning, then sleep briefly. Short sleeps:
    MPICH's nonblocking all-reduce advances one stage per poll, and with 200 us sleeps
    it took twice the star's time through rank 0 (tp=2 and 4 on 2 cores)."""
    if time.monotonic() - since < SPIN_S:
        os.sched_yield()
    else:
        time.sleep(0.00005)


def wait(req, what: str, lost_peer=None):
    """Poll `req` until done; RankLost after TIMEOUT_S or when MPI reports the peer failed
    (`lost_peer` is called while the launcher says some rank died: it may raise)."""
    start = time.monotonic()
    deadline = start + TIMEOUT_S
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
        _pause(start)


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
        # Poll often (a step's messages come back to back), then back off.
        if time.monotonic() - idle_since < 0.1:
            _pause(idle_since)
        else:
            time.sleep(0.002)


class Incoming:
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
