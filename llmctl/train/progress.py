"""A training run's progress from its metrics, for `llmctl job status RUN`.

Reads only the run folder's metrics JSONL (no torch): cheap on a login node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from llmctl.jobs.rundir import RunDir
from llmctl.train.metrics import read_records


def summarize(run_dir: str | Path, task: Optional[str] = None) -> dict[str, Any]:
    """Latest step, loss, validation loss, tokens/s, MFU and estimated seconds left.

    Keys are None where the run has not logged them yet (`started` is False when
    there are no metrics at all). The ETA is the remaining steps times the mean
    step time of the last five logged windows.
    """
    run = RunDir(run_dir)
    recs = read_records(run.metrics_file(task))
    out: dict[str, Any] = {"started": bool(recs), "step": None, "max_steps": None, "loss": None,
                           "val_loss": None, "tokens_per_s": None, "mfu": None, "memory_gb": None,
                           "eta_s": None, "restarts": 0, "finished": False,
                           "metrics": str(run.metrics_file(task))}
    if not recs:
        return out
    starts = [r for r in recs if r.get("kind") == "start"]
    trains = [r for r in recs if r.get("kind") == "train"]
    evals = [r for r in recs if r.get("kind") == "eval"]
    ends = [r for r in recs if r.get("kind") == "end"]
    out["restarts"] = max(len(starts) - 1, 0)
    if starts:
        out["max_steps"] = starts[-1].get("max_steps")
        out["step"] = starts[-1].get("step")
    if trains:
        t = trains[-1]
        out.update(step=t["step"], max_steps=t.get("max_steps", out["max_steps"]), loss=t["loss"],
                   tokens_per_s=t.get("tokens_per_s"), mfu=t.get("mfu"), memory_gb=t.get("memory_gb"))
        recent = [r["step_time_s"] for r in trains[-5:] if r.get("step_time_s")]
        if recent and out["max_steps"] is not None:
            out["eta_s"] = max(out["max_steps"] - t["step"], 0) * sum(recent) / len(recent)
    if evals:
        out["val_loss"] = evals[-1]["val_loss"]
    if ends and ends[-1].get("reason") == "finished" and recs[-1] is ends[-1]:
        out["finished"] = True
        out["eta_s"] = 0.0
    return out
