"""Test-only hooks, on with LLMCTL_SERVE_TEST_HOOKS=1: hold the engine at a known point
or make one request fail, so that a test sees a state that would otherwise last only
as long as some work takes, whatever the machine's speed.

Never set it in production: any client could then stall or fail the engine. Off
(the default), the body field below is ignored and nothing here is installed.

A request asks with the body field `llmctl_test`:

- "hold": once the request has its first token the engine stops stepping (it stays
  in the running batch, new requests wait) until the request is aborted (its client
  hangs up) or `POST /_test/release` is called.
- "fail-step": the request's share of a step raises once it has 2 tokens.
- "fail-forward": every forward pass that includes the request raises.
- "fail-engine": the scheduler raises while the request waits: the engine's state
  is unknown, so it is marked unhealthy (and restarted, see llmctl.serve.restart).
"""

from __future__ import annotations

import os
import threading
import time

ENV = "LLMCTL_SERVE_TEST_HOOKS"


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


class InjectedFault(RuntimeError):
    pass


def _hook(seq) -> str | None:
    return getattr(getattr(seq, "params", None), "test_hook", None)


class Hooks:
    def __init__(self):
        self.held = None            # the sequence the engine is held for
        self.has_held: set[int] = set()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()


def install(engine) -> Hooks:
    """Wrap `engine`'s step, share of a step, forward pass, scheduler and abort."""
    hooks = Hooks()
    step, advance, forward = engine.step, engine._advance, engine.runner.forward
    schedule, abort = engine.scheduler.schedule, engine.abort

    def held_step():
        if hooks.held is not None:
            if not hooks.released.is_set():
                time.sleep(0.01)  # the caller loops; the between-steps health checks still run
                return []
            hooks.held = None
        touched = step()
        for s in touched:
            if (_hook(s) == "hold" and s.output_ids and not s.finished
                    and s.seq_id not in hooks.has_held):
                hooks.has_held.add(s.seq_id)
                hooks.released.clear()
                hooks.held = s
        return touched

    def failing_advance(seq, *args):
        got = advance(seq, *args)
        if _hook(seq) == "fail-step" and len(seq.output_ids) >= 2 and not seq.finished:
            raise InjectedFault("injected fault in this request's step (llmctl_test=fail-step)")
        return got

    def failing_forward(chunks, **kw):
        if any(_hook(s) == "fail-forward" for s, _ in chunks):
            raise InjectedFault("injected fault in a forward pass (llmctl_test=fail-forward)")
        return forward(chunks, **kw)

    def failing_schedule(state):
        if any(_hook(s) == "fail-engine" for s in state.waiting):
            raise InjectedFault("injected engine fault (llmctl_test=fail-engine)")
        return schedule(state)

    def releasing_abort(seq):
        abort(seq)  # first: the step that the release lets run drains this abort
        if seq is hooks.held:  # its client hung up
            hooks.release()

    engine.step, engine._advance, engine.runner.forward = held_step, failing_advance, failing_forward
    engine.scheduler.schedule, engine.abort = failing_schedule, releasing_abort
    engine.test_hooks = hooks
    return hooks
