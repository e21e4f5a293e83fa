"""Connection timeouts, so that slow or silent clients cannot hold the server's sockets.

uvicorn closes a keep-alive connection that stays idle for `timeout_keep_alive`
after a response, but it starts no timer on a new connection and cancels the idle
one on the first byte of the next request: a client that sent part of a request
head and then nothing ("slowloris") kept its socket forever (200 of them stayed
open 30 s). h11 bounds the head's size, not its time. So here a request head must
be complete within `header_s` of the connection opening or of the previous
response, else the connection is closed; `idle_s` is uvicorn's keep-alive
timeout; `body_s` bounds reading a request body (llmctl.serve.server, 408).

Set by environment variables (seconds), read when the server starts:
LLMCTL_SERVE_HEADER_TIMEOUT_S (default 10), LLMCTL_SERVE_IDLE_TIMEOUT_S (5),
LLMCTL_SERVE_BODY_TIMEOUT_S (30).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from llmctl.errors import LlmctlError


@dataclass(frozen=True)
class Timeouts:
    header_s: float = 10.0
    idle_s: float = 5.0
    body_s: float = 30.0

    @classmethod
    def from_env(cls) -> "Timeouts":
        got = {}
        for field, var in (("header_s", "LLMCTL_SERVE_HEADER_TIMEOUT_S"),
                           ("idle_s", "LLMCTL_SERVE_IDLE_TIMEOUT_S"),
                           ("body_s", "LLMCTL_SERVE_BODY_TIMEOUT_S")):
            raw = os.environ.get(var)
            if raw is None or raw == "":
                continue
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise LlmctlError(f"{var}={raw!r}: expected a positive number of seconds")
            got[field] = value
        return cls(**got)


def protocol(timeouts: Timeouts):
    """uvicorn's h11 protocol class with the request-head timeout (for `Config(http=...)`)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a whole request head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            self._arm()  # before super(): it may start a pipelined request, which disarms
            super().on_response_complete()

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeouts.header_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol
