"""The run's loss curve (loss.png in the run folder), from its metrics JSONL.

Restarts are read from the same file: every `start` record after the first is a
process that resumed from a checkpoint (a requeue after preemption, an elastic or
manual restart) at its `step`; an `end` record whose reason is not "finished" is a
stop (preempted, cancelled, not finite) at its step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmctl.charts import loss_curve, loss_figure


def plot_losses(train: list[tuple[int, float]], val: list[tuple[int, float]], out: Path,
                title: str = "loss") -> Path:
    """Training loss against the step, validation loss as markers."""
    return loss_curve(train, val, out, title=title)


def run_series(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the loss picture draws, from a run's metrics records."""
    starts = [r for r in recs if r.get("kind") == "start"]
    first = starts[0] if starts else {}
    return {
        "train": [(r["step"], r["loss"]) for r in recs if r.get("kind") == "train"],
        "val": [(r["step"], r["val_loss"]) for r in recs if r.get("kind") == "eval"],
        "title": f"{first.get('model')}" if first.get("model") else "loss",
        "restarts": [int(r.get("step") or 0) for r in starts[1:]],
        "stops": [(int(r["step"]), r.get("reason", "")) for r in recs
                  if r.get("kind") == "end" and r.get("reason") != "finished"],
    }


def run_figure(metrics: Path) -> Any:
    """The loss figure of a metrics JSONL file (unsaved)."""
    from llmctl.train.metrics import read_records

    return loss_figure(**run_series(read_records(metrics)))


def plot_run(metrics: Path, out: Path) -> Path:
    """The loss curve of a metrics JSONL file, restarts and stops marked."""
    from llmctl.train.metrics import read_records

    return loss_curve(**run_series(read_records(metrics)), out=out)
