"""Weights & Biases backend, offline: the run is written under <tracking dir>/wandb/ and
nothing leaves the node (compute nodes often have no internet); `wandb sync DIR` uploads
it later. The run id is derived from the run folder, so a restarted run resumes the same
W&B run. Console capture is off: the trainer's own lines stay as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmctl.track.base import RunInfo, Tracker


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, info: RunInfo):
        import wandb

        self.run = wandb.init(project=info.project, name=info.name, id=info.stable_id(), resume="allow",
                              dir=str(info.dir), mode="offline",
                              settings=wandb.Settings(console="off", silent=True))

    def params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def file(self, path: Path) -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self) -> None:
        self.run.finish()


def open_run(info: RunInfo) -> Tracker:
    return WandbTracker(info)
