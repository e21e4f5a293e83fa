"""Running the sections: a budget each (soft: measurement loops stop at it; hard: an alarm
at 1.5x ends a section that overruns, e.g. a compile that hangs), one try/except each,
results kept as they come so that a section cut short still reports what it measured;
then one JSON report and a short text summary."""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from llmctl.gpucheck import SCHEMA


class SectionTimeout(Exception):
    """A section ran past its hard limit."""


class Skip(Exception):
    """A section (or part of one) that cannot run here; the message says why."""


class Section:
    """What a section function gets: its budget, a place for results, notes and progress."""

    def __init__(self, name: str, budget_s: float, ctx: "Context"):
        self.name, self.budget_s, self.ctx = name, budget_s, ctx
        self.t0 = time.perf_counter()
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self.skipped: dict[str, str] = {}  # part -> why

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def log(self, msg: str) -> None:
        print(f"[{self.name} {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class Context:
    """What every section shares: the mode, the device, the shapes, the output folder and
    figures that later sections use (memory bandwidth for the roofline, the profile)."""

    def __init__(self, cpu: bool, out: Path):
        import torch

        self.cpu = cpu or not torch.cuda.is_available()
        self.forced_cpu = cpu
        self.device = torch.device("cpu" if self.cpu else "cuda", 0)
        self.out = out
        self.shared: dict[str, Any] = {}


def _alarm(seconds: float):
    def fire(signum, frame):
        raise SectionTimeout(f"ran past its hard limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    return old


def run_section(name: str, fn: Callable[[Section], None], budget_s: float, ctx: Context) -> dict[str, Any]:
    sec = Section(name, budget_s, ctx)
    sec.log(f"start (budget {budget_s:.0f} s)")
    status, reason, error = "ok", None, None
    old = _alarm(budget_s * 1.5 + 30)
    try:
        fn(sec)
    except Skip as e:
        status, reason = "skipped", str(e)
    except SectionTimeout as e:
        status, error = "partial" if sec.results else "failed", str(e)
    except Exception as e:  # one section's failure must not lose the others
        status, error = "partial" if sec.results else "failed", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    _free(ctx)
    took = time.perf_counter() - sec.t0
    sec.log(f"{status} in {took:.1f} s" + (f": {reason or error}" if reason or error else ""))
    return {"status": status, "seconds": round(took, 2), "budget_s": budget_s, "reason": reason,
            "error": error, "results": _clean(sec.results), "skipped_parts": sec.skipped, "notes": sec.notes}


def _free(ctx: Context) -> None:
    import gc

    import torch

    torch._dynamo.reset()  # compiled graphs hold their models: let the next section have the memory
    gc.collect()
    if not ctx.cpu:
        torch.cuda.empty_cache()


def _clean(v: Any) -> Any:
    """JSON-safe: floats rounded to 6 significant digits; a non-finite float becomes None."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    return v


def environment(ctx: Context) -> dict[str, Any]:
    import torch

    from llmctl import __version__

    env = {"llmctl": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "hostname": socket.gethostname(),
           "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
           "device": torch.cuda.get_device_name(0) if not ctx.cpu else platform.processor() or "cpu",
           "cpu_threads": torch.get_num_threads()}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    return env


def write(out: Path, report: dict[str, Any], summary: list[str]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jp, tp = out / "gpu-check.json", out / "gpu-check.txt"
    for path, text in ((jp, json.dumps(report, indent=1, allow_nan=False) + "\n"), (tp, "\n".join(summary) + "\n")):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return jp, tp


def header(ctx: Context, started: float) -> dict[str, Any]:
    return {"schema": SCHEMA, "mode": "cpu" if ctx.cpu else "gpu", "forced_cpu": ctx.forced_cpu,
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(ctx)}


def fmt(x: Optional[float], unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}g}{unit}"
