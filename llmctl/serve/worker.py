"""The engine thread: runs `Engine.step` in a loop and hands tokens to asyncio listeners.

HTTP handlers live on the event loop; the engine is single-threaded. A handler
registers an asyncio.Queue for its sequence and is woken (thread-safely) after
every step that touched it. A request that fails alone comes back finished with
reason "error" (llmctl.serve.engine). If the engine itself fails (EngineFailure,
any other exception from a step, or a lost MPI rank) every listener is woken
with the error and `healthy` turns False: no request waits forever, and
llmctl.serve.restart may build a new engine.
"""

from __future__ import annotations

import threading
import time
from typing import Optional


class EngineThread:
    def __init__(self, engine, step_hook=None):
        self.engine = engine
        self.listeners: dict[int, tuple] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stop_flag = False
        self.error: Optional[str] = None
        self.step_hook = step_hook  # extra health check run between steps (MPI ranks alive)
        self.thread = threading.Thread(target=self._run, name="llmctl-engine", daemon=True)
        self.tokens_window: list[tuple[float, int]] = []
        self.died = threading.Event()  # set once the engine has failed (for the restarter)

    @property
    def healthy(self) -> bool:
        return self.error is None and self.thread.is_alive()

    def start(self) -> "EngineThread":
        self.thread.start()
        return self

    def shutdown(self) -> None:
        self.stop_flag = True
        self.wake.set()
        self.thread.join(timeout=10)

    def listen(self, seq, loop, q, every_token: bool = True) -> None:
        """Wake `q` after each step that gave `seq` a token (streaming), or only once it
        has finished (`every_token=False`: a whole response waits for the end anyway)."""
        with self.lock:
            self.listeners[seq.seq_id] = (seq, loop, q, every_token)

    def unlisten(self, seq) -> None:
        with self.lock:
            self.listeners.pop(seq.seq_id, None)

    def submit(self, seq) -> None:
        self.engine.submit(seq)
        self.wake.set()

    def abort(self, seq) -> None:
        self.engine.abort(seq)
        self.wake.set()

    def _notify(self, seqs) -> None:
        by_loop: dict = {}
        with self.lock:
            for s in seqs:
                t = self.listeners.get(s.seq_id)
                if t is not None and (t[3] or s.finished):
                    by_loop.setdefault(t[1], []).append((t[2], s))
        # One wake-up per event loop and step: call_soon_threadsafe writes to the loop's
        # self-pipe, and one write per sequence per step cost the loop more than its requests.
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _fail_all(self, message: str) -> None:
        self.error = message
        with self.lock:
            targets = list(self.listeners.values())
        for seq, loop, q, _ in targets:
            if not seq.finished:
                seq.error, seq.finish_reason = message, "error"
            loop.call_soon_threadsafe(q.put_nowait, seq)
        self.died.set()

    def _run(self) -> None:
        eng = self.engine
        try:
            while not self.stop_flag:
                if self.step_hook is not None:
                    problem = self.step_hook()
                    if problem:
                        return self._fail_all(problem)
                if not eng.has_work:
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                before = eng.stats["generated_tokens"]
                touched = eng.step()
                if self.step_hook is not None and getattr(eng, "mpi_leader", None) and eng.mpi_leader.error:
                    return self._fail_all(eng.mpi_leader.error)
                self.tokens_window.append((time.monotonic(), eng.stats["generated_tokens"] - before))
                if len(self.tokens_window) > 2000:
                    del self.tokens_window[:1000]
                if touched:
                    self._notify(touched)
        except Exception as e:  # the engine is gone: fail every request rather than hang it
            leader = getattr(eng, "mpi_leader", None)
            if leader is not None and leader.error is None:
                leader.error = f"{type(e).__name__}: {e}"
            self._fail_all(f"engine failed: {type(e).__name__}: {e}")

    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        recent = [n for t, n in list(self.tokens_window) if now - t <= window]
        return sum(recent) / window


def _deliver(items) -> None:
    for q, seq in items:
        q.put_nowait(seq)
