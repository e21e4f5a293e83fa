"""Eval results to the trackers: each task's metric and its standard error, at the
checkpoint's step (`[tracking]` in the eval suite).

`eval run` logs one tracker run per call; `eval watch` reopens the same tracker run
for every checkpoint of a training run, so the metrics draw one curve against the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from llmctl.track.base import RunInfo, flatten, open_trackers, require, tracking_dir


def check(suite: Any) -> None:
    """The suite's trackers can be imported (called before the model loads)."""
    if suite.tracking is not None and suite.tracking.backends:
        require(suite.tracking.backends, "eval suite: tracking")


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """{"eval/<task>/<metric>": value, ".../<metric>_stderr": standard error} of harness-shaped results."""
    out = {}
    for task, res in results.get("results", {}).items():
        for k, v in res.items():
            if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"eval/{task}/{k.split(',')[0]}"] = float(v)
    return out


def log_results(suite: Any, results: dict[str, Any], base: Path, name: str, key: str,
                step: Optional[int], files: tuple[Path, ...] = ()) -> Optional[Path]:
    """Send `results` to the suite's trackers; returns the tracking folder (None: no tracking)."""
    cfg = suite.tracking
    if cfg is None or not cfg.backends:
        return None
    base = Path(base).absolute()
    info = RunInfo(dir=tracking_dir(cfg, base), project=cfg.project, name=cfg.run_name or name,
                   key=key, start_step=step or 0, ids=base / "tracking-runs.json")
    trackers = open_trackers(cfg.backends, info)
    try:
        trackers.params(flatten(results.get("config", {}), "eval."))
        trackers.metrics(metrics_of(results), step or 0)
        for f in files:
            trackers.file(f)
    finally:
        trackers.close()
    return info.dir
