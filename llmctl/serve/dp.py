"""Data-parallel replicas over MPI (`llmctl serve start --mpi-mode dp`).

Every rank loads the whole model and runs its own engine and KV cache. Rank 0
runs HTTP and a `Router` that stands where the single engine thread would: each
new request goes to the replica with the fewest unfinished requests (rank 0's
own engine included; ties go to the replica that has served fewest), and the
workers send back, after every step, the tokens and text of the requests they
touched, which rank 0 copies into the request the HTTP handler waits on.

Failures are handled as in tensor-parallel mode (llmctl.serve.rankloss): every wait
polls; a worker that is gone (pid on this host, hydra's SIGUSR1, or no report
for `TIMEOUT_S`) fails the requests it held and turns /health unhealthy, while
requests on the live replicas finish. Workers report at least every
`REPORT_EVERY_S` so an idle one is checked too.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time

from llmctl.serve import rankloss

TAG_REQ, TAG_REPORT = 21, 22
REPORT_EVERY_S = 0.5


class _Len:
    """A count that quacks like the queue it summarises (the server only takes len())."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class _Cache:
    def __init__(self, used_fraction: float):
        self.used_fraction = used_fraction


class EngineView:
    """What the HTTP server reads of 'the engine', summed over the replicas; anything
    else (tokenizer, cfg, check, inbox) is rank 0's engine, identical on every rank."""

    def __init__(self, router: "Router"):
        self._router = router

    def __getattr__(self, name):
        return getattr(self._router.local.engine, name)

    @property
    def running(self):
        return _Len(len(self._router.local.engine.running)
                    + sum(r["running"] for r in self._router.reports.values()))

    @property
    def waiting(self):
        return _Len(len(self._router.local.engine.waiting)
                    + sum(r["waiting"] for r in self._router.reports.values()))

    @property
    def stats(self):
        total = dict(self._router.local.engine.stats)
        for rep in self._router.reports.values():
            for k, v in rep["stats"].items():
                total[k] = total.get(k, 0) + v
        return total

    @property
    def cache(self):
        used = [self._router.local.engine.cache.used_fraction]
        used += [r["kv_used"] for r in self._router.reports.values()]
        return _Cache(sum(used) / len(used))

    @property
    def rank_pids(self):
        return [pid for _, pid in self._router.ranks]


class Router:
    """Rank 0: the EngineThread interface (listen/submit/abort/healthy) over N replicas."""

    def __init__(self, comm, engine):
        from llmctl.serve.worker import EngineThread

        self.comm = comm
        self.local = EngineThread(engine)
        self.engine = EngineView(self)
        self.ranks = comm.allgather((socket.gethostname(), os.getpid()))
        rankloss.watch_local_pids(self.ranks)
        self.host = socket.gethostname()
        self.workers = list(range(1, comm.Get_size()))
        self.alive = set(self.workers)
        self.reports = {r: {"running": 0, "waiting": 0, "stats": {}, "kv_used": 0.0} for r in self.workers}
        self.last_heard = {r: time.monotonic() for r in self.workers}
        self.last_check = 0.0
        self.peer_lost_at = 0.0  # when this rank first saw the launcher's report of a lost peer
        self.where: dict[int, int] = {}          # seq_id -> rank serving it
        self.remote: dict[int, tuple] = {}       # seq_id -> (seq, loop, q) on a worker
        self.pending: dict[int, tuple] = {}      # seq_id -> listener, until submit picks a rank
        self.served = {r: 0 for r in range(comm.Get_size())}
        self.outbox: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.error = None
        self.stop_flag = False
        self.tokens_window: list[tuple[float, int]] = []
        self.thread = threading.Thread(target=self._run, name="llmctl-dp-router", daemon=True)

    # --- the EngineThread interface ------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.error is None and self.local.healthy and self.thread.is_alive()

    @property
    def died(self):
        """Rank 0's own engine failed (lost replicas fail their requests in `_lose`)."""
        return self.local.died

    def start(self) -> "Router":
        self.local.start()
        self.thread.start()
        return self

    def listen(self, seq, loop, q, every_token: bool = True) -> None:
        # replicas report every step anyway; every listener is woken per token
        with self.lock:
            self.pending[seq.seq_id] = (seq, loop, q)

    def unlisten(self, seq) -> None:
        """The handler is done with `seq`: it no longer counts towards its replica's load."""
        with self.lock:
            self.pending.pop(seq.seq_id, None)
            self.remote.pop(seq.seq_id, None)
            self.where.pop(seq.seq_id, None)
        self.local.unlisten(seq)

    def submit(self, seq) -> None:
        with self.lock:
            rank = self._pick()
            self.where[seq.seq_id] = rank
            self.served[rank] += 1
            listener = self.pending.pop(seq.seq_id, None)
            if rank and listener:
                self.remote[seq.seq_id] = listener
        if rank == 0:
            if listener:
                self.local.listen(*listener)
            self.local.submit(seq)
        else:
            self.outbox.put((rank, ("add", seq.seq_id, seq.prompt_ids, seq.params)))

    def abort(self, seq) -> None:
        with self.lock:
            rank = self.where.get(seq.seq_id)
        if rank == 0:
            self.local.abort(seq)
        elif rank is not None:
            self.outbox.put((rank, ("abort", seq.seq_id)))

    def shutdown(self) -> None:
        self.stop_flag = True
        self.thread.join(timeout=10)
        self.local.shutdown()

    def close(self) -> None:
        """Stop the workers (after `shutdown`, last of the server's cleanups)."""
        if self.error:
            os._exit(1)  # a rank is gone: MPI_Finalize would wait for it forever
        for r in sorted(self.alive):
            try:
                rankloss.wait(self.comm.isend(("stop",), dest=r, tag=TAG_REQ), f"stopping rank {r}")
            except rankloss.RankLost:
                os._exit(1)

    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        remote = sum(n for t, n in list(self.tokens_window) if now - t <= window) / window
        return self.local.tokens_per_second(window) + remote

    def metric_lines(self) -> list[str]:
        name = "llmctl_replica_requests_total"
        lines = [f"# HELP {name} Requests routed to each data-parallel replica (MPI rank).",
                 f"# TYPE {name} counter"]
        return lines + [f'{name}{{rank="{r}"}} {n}' for r, n in sorted(self.served.items())]

    # --- routing and the MPI side ------------------------------------------------------
    def _load(self, rank: int) -> int:
        """Requests whose handlers still wait on `rank` (lock held)."""
        return sum(1 for r in self.where.values() if r == rank)

    def _pick(self) -> int:
        live = [0] + sorted(self.alive)
        return min(live, key=lambda r: (self._load(r), self.served[r], r))

    def _run(self) -> None:
        try:
            while not self.stop_flag and self.error is None:
                busy = self._send_outbox() | self._receive()
                if time.monotonic() - self.last_check > 0.1:
                    self.last_check = time.monotonic()
                    self._check()
                if not busy:
                    time.sleep(0.0005)
        except Exception as e:  # the router is gone: fail every request rather than hang it
            self._lose(sorted(self.alive), f"data-parallel router failed: {type(e).__name__}: {e}")

    def _send_outbox(self) -> bool:
        sent = False
        while True:
            try:
                rank, msg = self.outbox.get_nowait()
            except queue.Empty:
                return sent
            if rank in self.alive:
                rankloss.wait(self.comm.isend(msg, dest=rank, tag=TAG_REQ), f"sending to rank {rank}",
                              self._check_raise)
            sent = True

    def _receive(self) -> bool:
        got = False
        for r in sorted(self.alive):
            msg = self.comm.improbe(source=r, tag=TAG_REPORT)
            while msg is not None:
                report = msg.recv()
                got = True
                self.last_heard[r] = time.monotonic()
                self._apply(r, report)
                msg = self.comm.improbe(source=r, tag=TAG_REPORT)
        return got

    def _apply(self, rank: int, report: dict) -> None:
        self.reports[rank] = {k: report[k] for k in ("running", "waiting", "stats", "kv_used")}
        now = time.monotonic()
        new_tokens = 0
        for sid, fields in report["updates"]:
            with self.lock:
                listener = self.remote.get(sid)
            if listener is None:
                continue  # the client went away
            seq, loop, q = listener
            new_tokens += len(fields["new_ids"])
            seq.output_ids.extend(fields["new_ids"])
            # Tokens arrive once per report: the ones of one report share its arrival time.
            seq.token_times.extend([now] * len(fields["new_ids"]))
            seq.output_logprobs.extend(fields["new_logprobs"])
            if fields["prompt_logprobs"] is not None:
                seq.prompt_logprobs = fields["prompt_logprobs"]
            seq.text = fields["text"]
            if fields["new_ids"]:
                seq.first_token_at = seq.first_token_at or now
                seq.last_token_at = now
            seq.error = fields["error"]
            seq.finish_reason = fields["finish_reason"]
            loop.call_soon_threadsafe(q.put_nowait, seq)
        if new_tokens:
            self.tokens_window.append((now, new_tokens))
            if len(self.tokens_window) > 2000:
                del self.tokens_window[:1000]

    def _dead_ranks(self) -> list[int]:
        dead = [r for r in self.alive
                if self.ranks[r][0] == self.host and rankloss.pid_gone(self.ranks[r][1])]
        late = [r for r in self.alive if time.monotonic() - self.last_heard[r] > rankloss.TIMEOUT_S]
        return sorted(set(dead + late))

    def _check(self) -> None:
        dead = self._dead_ranks()
        if dead:
            self._lose(dead, "MPI rank lost: " + ", ".join(
                f"rank {r} (pid {self.ranks[r][1]}) is gone" for r in dead))
        elif rankloss.PEER_LOST.is_set():  # on another host: the launcher said so, naming none
            # A live replica reports every REPORT_EVERY_S: the lost one is the one gone quiet.
            # Give them a few report periods to tell; then name what can be known.
            now = time.monotonic()
            self.peer_lost_at = self.peer_lost_at or now
            quiet = [r for r in self.alive if now - self.last_heard[r] > 3 * REPORT_EVERY_S]
            if quiet:
                self._lose(sorted(quiet), "MPI rank lost: " + ", ".join(
                    f"rank {r} on {self.ranks[r][0]} (pid {self.ranks[r][1]}) stopped reporting after the "
                    "MPI launcher reported a dead rank" for r in sorted(quiet)))
            elif now - self.peer_lost_at > 4 * REPORT_EVERY_S:
                self._lose(sorted(self.alive), "MPI rank lost: " + rankloss.remote_loss(
                    self.ranks, self.host, self.alive))

    def _check_raise(self) -> None:
        self._check()
        if self.error:
            raise rankloss.RankLost(self.error)

    def _lose(self, ranks: list[int], message: str) -> None:
        """Fail the requests that `ranks` held; /health turns unhealthy."""
        self.error = self.error or message
        with self.lock:
            self.alive -= set(ranks)
            doomed = [sid for sid, r in self.where.items() if r in ranks]
            targets = [self.remote.pop(sid) for sid in doomed if sid in self.remote]
        for seq, loop, q in targets:
            if not seq.finished:
                seq.finish_reason = "error"
            loop.call_soon_threadsafe(q.put_nowait, seq)


def replica_loop(comm, eng) -> None:
    """Ranks > 0 in dp mode: `eng` a whole engine; run what rank 0 routes here, report back."""
    from llmctl.serve.sequence import Sequence

    ranks = comm.allgather((socket.gethostname(), os.getpid()))
    rankloss.watch_local_pids(ranks)
    rank0_pid = ranks[0][1] if ranks[0][0] == socket.gethostname() else None
    seqs: dict[int, Sequence] = {}  # rank 0's seq_id -> this replica's sequence
    sid_of: dict[int, int] = {}     # this replica's seq_id -> rank 0's
    sent = {}  # sid -> (ids, output logprobs, prompt logprobs) already reported
    last_report = 0.0
    while True:
        while (msg := comm.improbe(source=0, tag=TAG_REQ)) is not None:
            op = msg.recv()
            if op[0] == "stop":
                return
            if op[0] == "add":
                _, sid, prompt_ids, params = op
                seqs[sid] = Sequence(prompt_ids, params)
                sid_of[seqs[sid].seq_id] = sid
                sent[sid] = (0, 0, 0)
                eng.submit(seqs[sid])
            elif op[0] == "abort" and op[1] in seqs:
                eng.abort(seqs[op[1]])
        if rankloss.PEER_LOST.is_set() and (rank0_pid is None or rankloss.pid_gone(rank0_pid)):
            os._exit(1)  # rank 0 (or the job) is gone: nobody to answer
        touched = eng.step() if eng.has_work else []
        updates = []
        # What a step touched, plus sequences that ended without a token (aborted).
        report_on = {s.seq_id: s for s in touched}
        report_on.update({s.seq_id: s for s in seqs.values() if s.finished})
        for s in report_on.values():
            sid = sid_of[s.seq_id]
            n_ids, n_lp, n_plp = sent[sid]
            updates.append((sid, {
                "new_ids": s.output_ids[n_ids:], "new_logprobs": s.output_logprobs[n_lp:],
                "prompt_logprobs": dict(s.prompt_logprobs) if len(s.prompt_logprobs) != n_plp else None,
                "text": s.text, "finish_reason": s.finish_reason, "error": s.error}))
            sent[sid] = (len(s.output_ids), len(s.output_logprobs), len(s.prompt_logprobs))
            if s.finished:
                del seqs[sid], sent[sid], sid_of[s.seq_id]
        now = time.monotonic()
        if updates or now - last_report >= REPORT_EVERY_S:
            report = {"updates": updates, "running": len(eng.running),
                      "waiting": len(eng.waiting) + eng.inbox.qsize(), "stats": dict(eng.stats),
                      "kv_used": eng.cache.used_fraction}
            rankloss.await_leader(comm.isend(report, dest=0, tag=TAG_REPORT))
            last_report = now
        if not touched and not eng.has_work:
            time.sleep(0.001)
