"""Experiment tracking: the run's metrics, config and plan sent to TensorBoard, MLflow or
Weights & Biases besides metrics.jsonl (`[tracking]` in a training config or eval suite).

`base` holds the interface and the fan-out; one module per backend imports its package
only when a run opens it, so the login node never pays for them.
"""

from llmctl.track.base import (BACKENDS, Tracker, Trackers, missing, open_trackers, require,  # noqa: F401
                               training_tracker)
