"""MLflow backend: a local file store (`file:` URI) under <tracking dir>/mlruns/.

The file store, not SQLite: on the network filesystems of HPC clusters (NFS, Lustre)
SQLite's locks are unreliable, while the file store is plain files. MLflow 3 asks for
MLFLOW_ALLOW_FILE_STORE=true to use it; it is set for this process unless the user set
it. `mlflow ui --backend-store-uri file:<dir>/mlruns` shows the runs. A restarted run
reopens its MLflow run (the id is kept in the run folder's tracking-runs.json).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from llmctl.track.base import RunInfo, Tracker

MAX_PARAM = 6000  # MLflow's limit on a param value's length


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, info: RunInfo):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.uri = f"file:{info.dir / 'mlruns'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(info.project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(info.project)
        self.run_id = info.remembered("mlflow")
        self.known: dict[str, str] = {}
        if self.run_id is not None:
            try:
                run = self.client.get_run(self.run_id)
                self.known = dict(run.data.params)
                self.client.update_run(self.run_id, status="RUNNING")
            except Exception:  # the store moved or was wiped: a new run
                self.run_id = None
        if self.run_id is None:
            self.run_id = self.client.create_run(exp_id, run_name=info.name,
                                                 tags={"llmctl.run": info.key}).info.run_id
            info.remember("mlflow", self.run_id)

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow params cannot change: a resumed run adds only the ones it did not have.
        new = [Param(k, str(v)[:MAX_PARAM]) for k, v in params.items() if k not in self.known]
        for i in range(0, len(new), 100):  # log_batch takes at most 100 params at once
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        self.known.update({p.key: p.value for p in new})

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_run(info: RunInfo) -> Tracker:
    return MlflowTracker(info)
