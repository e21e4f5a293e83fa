"""TensorBoard backend: event files under <tracking dir>/tensorboard/<run name>/.

Written with torch's SummaryWriter (the `tensorboard` package writes the files). A
resumed run purges the steps after its checkpoint that the interrupted run had
already logged, so the curve has no doubled stretch. The config and the plan go in
as text (TensorBoard's TEXT tab), params as one markdown table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmctl.track.base import RunInfo, Tracker


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, info: RunInfo):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = info.dir / "tensorboard" / info.name
        self.writer = SummaryWriter(str(self.logdir), purge_step=info.start_step + 1 if info.start_step else None)
        self.step = info.start_step

    def params(self, params: dict[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in sorted(params.items()))
        self.writer.add_text("params", "| key | value |\n|---|---|\n" + rows, self.step)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # `tensorboard --logdir` sees each step as it comes

    def file(self, path: Path) -> None:
        # Four-space indent: markdown's code block, so TOML keeps its lines.
        body = "\n".join("    " + line for line in path.read_text(encoding="utf-8").splitlines())
        self.writer.add_text(path.name, body, self.step)

    def close(self) -> None:
        self.writer.close()


def open_run(info: RunInfo) -> Tracker:
    return TensorBoardTracker(info)
