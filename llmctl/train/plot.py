"""The run's loss curve (loss.png in the run folder), from its metrics JSONL."""

from __future__ import annotations

from pathlib import Path

from llmctl.charts import loss_curve


def plot_losses(train: list[tuple[int, float]], val: list[tuple[int, float]], out: Path,
                title: str = "loss") -> Path:
    """Training loss against the step, validation loss as markers."""
    return loss_curve(train, val, out, title=title)


def plot_run(metrics: Path, out: Path) -> Path:
    """The loss curve of a metrics JSONL file."""
    from llmctl.train.metrics import read_records

    recs = read_records(metrics)
    train = [(r["step"], r["loss"]) for r in recs if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in recs if r.get("kind") == "eval"]
    start = next((r for r in recs if r.get("kind") == "start"), {})
    title = f"{start.get('model', 'loss')}" if start.get("model") else "loss"
    return plot_losses(train, val, out, title=title)
