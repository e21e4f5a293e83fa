"""`llmctl hw benchmark`: measure the node's real ceilings, one module per component.

`compute` (dense matmul rate per dtype), `memory` (device copy bandwidth), `comm`
(all-reduce / all-gather bus bandwidth over a size sweep, nccl-tests' conventions)
and `disk` (sequential write with fsync, then read, in the checkpoint folder).
Each returns {"measured": {key: value}, "details": {...}}; the measured keys go
into the profile's `[measured]`, which the planner prefers over the datasheet.
torch is imported inside the benchmark functions only.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

COMPONENTS = ("compute", "memory", "comm", "disk")

Progress = Callable[[str], None]


def run(component: str, duration: float, progress: Progress, *, folder: Optional[str] = None,
        procs: Optional[int] = None) -> dict[str, Any]:
    """Run one component, or all of them (`duration` seconds each)."""
    from llmctl.errors import LlmctlError

    if duration <= 0:
        raise LlmctlError(f"--duration must be positive, got {duration}")
    names = COMPONENTS if component == "all" else (component,)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise LlmctlError(f"unknown component {unknown[0]!r}; components: {', '.join(COMPONENTS)}, all")
    measured: dict[str, float] = {}
    details: dict[str, Any] = {}
    for name in names:
        progress(f"[{name}] {duration:g} s")
        if name == "compute":
            from llmctl.hw.bench.compute import matmul as fn
            result = fn(duration, progress)
        elif name == "memory":
            from llmctl.hw.bench.memory import copy_bandwidth
            result = copy_bandwidth(duration, progress)
        elif name == "comm":
            from llmctl.hw.bench.comm import collectives
            result = collectives(duration, progress, nprocs=procs)
        else:
            from llmctl.hw.bench.disk import sequential
            result = sequential(folder or ".", duration, progress)
        measured.update(result["measured"])
        details[name] = result["details"]
    return {"measured": measured, "details": details}
