"""The server's own supervision: a failed engine is replaced in-process (one rank).

When the engine fails with its state unknown (llmctl.serve.engine.EngineFailure,
or any other exception out of a step), the engine thread fails every request it
holds and /health turns 503. The Restarter then builds a new engine around the
loaded weights (serving never writes them; what a failure can leave inconsistent
is the engine's queues, block tables and KV cache, all new) with a new thread, and
swaps it in: /health is 200 again and new requests are served. A restart takes
milliseconds, and `llmctl_engine_restarts_total` counts them.

A fault that comes back at once is not transient (a broken GPU, a bad artifact):
after MAX_RESTARTS failures within WINDOW_S the Restarter gives up and stops the
server, which exits with status 2 and the reason, so that its job ends FAILED
rather than answer 503 forever. Under MPI there is no Restarter: a lost rank
cannot be replaced from inside the job, and /health stays 503 until the job is
restarted.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

MAX_RESTARTS = 3
WINDOW_S = 600.0


class Restarter:
    def __init__(self, state, rebuild: Callable[[], object], give_up: Callable[[], None]):
        self.state, self.rebuild, self.give_up = state, rebuild, give_up
        self.restarts = 0
        self.recent: list[float] = []
        self.gave_up: Optional[str] = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="llmctl-restarter", daemon=True)

    def start(self) -> "Restarter":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stopping.is_set():
            worker = self.state.worker
            if not worker.died.wait(0.5) or self.stopping.is_set():
                continue
            now = time.monotonic()
            self.recent = [t for t in self.recent if now - t < WINDOW_S]
            if len(self.recent) >= MAX_RESTARTS:
                self.gave_up = (f"the engine failed {len(self.recent) + 1} times in "
                                f"{WINDOW_S:.0f} s; last: {worker.error}")
                print(f"llmctl serve: {self.gave_up}; stopping", flush=True)
                return self.give_up()
            self.recent.append(now)
            print(f"llmctl serve: {worker.error}; restarting the engine", flush=True)
            worker.shutdown()  # its thread has already returned: this only joins it
            try:
                fresh = self.rebuild()
            except Exception as e:  # stays unhealthy; the next round counts towards giving up
                worker.error = f"{worker.error}; the restart failed: {type(e).__name__}: {e}"
                print(f"llmctl serve: {worker.error}", flush=True)
                self.stopping.wait(1.0)
                continue
            self.state.swap(fresh)
            self.restarts += 1
            print(f"llmctl serve: engine restarted ({self.restarts} so far)", flush=True)
