"""The `[tracking]` section of a training config and an eval suite: which experiment
trackers (TensorBoard, MLflow, Weights & Biases) receive the run's metrics."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from llmctl.config.base import Name, StrictModel

BACKEND_NAMES = ("tensorboard", "mlflow", "wandb")


class Tracking(StrictModel):
    """Experiment tracking: besides metrics.jsonl, send the metrics, the resolved config
    and the plan to these trackers (rank 0 only; each needs its package: the `track` extra)."""

    backends: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    """Trackers to write to: `tensorboard` (event files), `mlflow` (a local file store,
    `file:` URI) and `wandb` (Weights & Biases in offline mode; `wandb sync` uploads it later)."""
    project: Name = "llmctl"
    """MLflow experiment and W&B project name."""
    run_name: Optional[Name] = None
    """Run name in the trackers (default: the run folder's name; eval adds `-eval`)."""
    dir: str = "tracking"
    """Where the trackers write: relative to the run folder (training, `eval watch`) or to the
    results file's folder (`eval run --output`; the current folder without it), or absolute
    (one store shared by many runs). Holds `tensorboard/<run>/`, `mlruns/` and `wandb/`."""

    @model_validator(mode="after")
    def _unique(self) -> "Tracking":
        seen = [b for i, b in enumerate(self.backends) if b in self.backends[:i]]
        if seen:
            raise ValueError(f"backends: {', '.join(map(repr, dict.fromkeys(seen)))} listed twice")
        return self
