"""The tracker interface, the backend table, the package check and the fan-out.

A backend implements `Tracker` (params, metrics, files, close). `Trackers` sends each
call to every open backend; a backend that fails mid-run is dropped with one warning
(metrics.jsonl stays the record of the run, so a tracker never stops training). A
missing package is found before the run starts: `require` at pre-flight (submit) and
when the run opens its trackers, never at the first metric.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from llmctl.errors import LlmctlError


@dataclass(frozen=True)
class Backend:
    module: str  # the llmctl module implementing it
    packages: tuple[str, ...]  # what it imports at run time
    pip: str  # what to install


BACKENDS = {
    "tensorboard": Backend("llmctl.track.tensorboard", ("tensorboard",), "tensorboard"),
    "mlflow": Backend("llmctl.track.mlflow", ("mlflow",), "mlflow-skinny"),
    "wandb": Backend("llmctl.track.wandb", ("wandb",), "wandb"),
}


class Tracker:
    """One backend's run. Values are plain: params str/int/float/bool, metrics float."""

    name = "tracker"

    def params(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def metrics(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def file(self, path: Path) -> None:
        """Keep a copy of a small text file of the run (the config, the plan)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


@dataclass
class RunInfo:
    """What every backend needs to open (or reopen, after a restart) its run."""

    dir: Path  # the tracking folder, absolute
    project: str
    name: str
    key: str  # the same for every restart of this run: reopens the same tracker run
    start_step: int  # 0, or the step a resumed run starts from
    ids: Path  # JSON file of backend run ids (MLflow makes its own), per run folder

    def stable_id(self) -> str:
        """A backend run id derived from the key (W&B ids: lowercase letters and digits)."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:16]

    def remembered(self, backend: str) -> Optional[str]:
        try:
            return json.loads(self.ids.read_text(encoding="utf-8")).get(self.key, {}).get(backend)
        except (OSError, ValueError):
            return None

    def remember(self, backend: str, run_id: str) -> None:
        from llmctl.fsutil import atomic_write_text

        try:
            data = json.loads(self.ids.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        data.setdefault(self.key, {})[backend] = run_id
        atomic_write_text(self.ids, json.dumps(data, indent=2) + "\n")


def missing(backends: Iterable[str]) -> list[str]:
    """One line per backend whose package this Python cannot import (nothing is imported)."""
    out = []
    for name in backends:
        b = BACKENDS[name]
        gone = [p for p in b.packages if importlib.util.find_spec(p) is None]
        if gone:
            out.append(f"tracking.backends: {name!r} needs the {', '.join(gone)} package "
                       f"(pip install {b.pip}, or the track extra: pip install 'llmctl[track]')")
    return out


def require(backends: Iterable[str], where: str) -> None:
    found = missing(backends)
    if found:
        raise LlmctlError(f"{where}: " + "; ".join(found),
                          hint="install it, or remove it from [tracking] backends")


def warn(msg: str) -> None:
    print(f"llmctl: warning: {msg}", file=sys.stderr, flush=True)


class Trackers:
    """Every open backend at once; a failing one is dropped with a warning."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def _each(self, method: str, *args: Any) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as e:  # a tracker must not stop training: metrics.jsonl has it all
                warn(f"tracking: {t.name} failed ({type(e).__name__}: {e}); it gets nothing more from this run")
                self.trackers.remove(t)
                try:
                    t.close()
                except Exception:
                    pass

    def params(self, params: dict[str, Any]) -> None:
        self._each("params", params)

    def metrics(self, values: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            self._each("metrics", values, step)

    def file(self, path: Path) -> None:
        if Path(path).is_file():
            self._each("file", Path(path))

    def close(self) -> None:
        self._each("close")
        self.trackers = []


def open_trackers(backends: Iterable[str], info: RunInfo) -> Trackers:
    """Open each backend's run (the packages are checked first, all together)."""
    backends = list(backends)
    require(backends, "tracking")
    info.dir.mkdir(parents=True, exist_ok=True)
    opened: list[Tracker] = []
    try:
        for name in backends:
            opened.append(importlib.import_module(BACKENDS[name].module).open_run(info))
    except BaseException:
        for t in opened:
            t.close()
        raise
    return Trackers(opened)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config data as dotted keys ("optimizer.lr"); lists as JSON text."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, (list, tuple)):
        out[prefix[:-1]] = json.dumps(data)
    elif data is not None:
        out[prefix[:-1]] = data
    return out


# What a trainer's metrics record becomes: (record kind, record key) -> tracker metric.
TRAIN_METRICS = {
    "train": {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
              "tokens_per_s": "train/tokens_per_s", "step_time_s": "train/step_time_s", "mfu": "train/mfu",
              "memory_gb": "train/memory_gb", "gpu_util_pct": "train/gpu_util_pct",
              "gpu_mem_used_gb": "train/gpu_mem_used_gb", "tokens": "train/tokens", "epoch": "train/epoch"},
    "eval": {"val_loss": "val/loss"},
}


class TrainingTracker:
    """Turns the trainer's metrics records (llmctl.train.metrics.MetricsLog) into tracker calls.

    The trackers open at the `start` record (they need the step a resumed run starts
    from); `start` logs the resolved config and the plan, `train`/`eval` their metrics."""

    def __init__(self, backends: list[str], info: RunInfo, config: dict[str, Any], files: list[Path],
                 plan: Optional[dict[str, Any]]):
        require(backends, "tracking")  # before step 0, not at the first metric
        self.backends, self.info, self.config, self.files, self.plan = backends, info, config, files, plan
        self.trackers: Optional[Trackers] = None

    def record(self, rec: dict[str, Any]) -> None:
        kind = rec.get("kind")
        if kind == "start":
            if self.trackers is not None:
                self.trackers.close()
            self.info.start_step = int(rec.get("step") or 0)
            self.trackers = open_trackers(self.backends, self.info)
            run = {k: rec[k] for k in ("model", "params", "device", "precision", "micro_batch", "grad_accum",
                                       "seq_len", "tokens_per_step", "peak_flops") if rec.get(k) is not None}
            self.trackers.params({**flatten(self.config), **flatten(run, "run."),
                                  **(flatten(self.plan, "plan.") if self.plan else {})})
            for f in self.files:
                self.trackers.file(f)
            if rec.get("step"):  # a resumed run: marks the restart on the step axis
                self.trackers.metrics({"train/restart": 1.0}, int(rec["step"]))
            return
        names = TRAIN_METRICS.get(kind or "")
        if names and self.trackers is not None:
            self.trackers.metrics({names[k]: rec[k] for k in names if rec.get(k) is not None}, int(rec["step"]))

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


def tracking_dir(cfg: Any, base: Path) -> Path:
    d = Path(cfg.dir).expanduser()
    return (d if d.is_absolute() else base / d).absolute()


def training_tracker(s: Any) -> Optional[TrainingTracker]:
    """The tracker of a training run (a llmctl.train.setup.RunSetup), or None without `[tracking]`."""
    cfg = s.cfg.tracking
    if cfg is None or not cfg.backends:
        return None
    run_path = s.run.path.absolute()
    name = cfg.run_name or run_path.name
    if s.task:
        name += f"-task-{s.task}"
    info = RunInfo(dir=tracking_dir(cfg, run_path), project=cfg.project, name=name,
                   key=f"{run_path}:train:{s.task}", start_step=0, ids=run_path / "tracking-runs.json")
    plan = s.plan.to_data() if s.plan is not None else None
    # The config as the trainer reads it, the plan, and (where the launch wrote it) every
    # setting with its source; Trackers.file skips the ones that are not there.
    files = [s.config_path, s.run.plan_file, s.run.path / "resolved.json"]
    return TrainingTracker(list(cfg.backends), info, s.cfg.to_data(), files, plan)
