"""The cron-safe watcher: evaluate every complete checkpoint of a run exactly once.

    RUN/eval/
      state.json            committed evaluations: {checkpoint: row}; the one commit point
      results.jsonl         the results table, one row per checkpoint (rewritten from state)
      metrics.png           metric against step, ± standard error (redrawn from state)
      results/step-N.json   harness-shaped results of each checkpoint
      locks/                one lock file per checkpoint, and state.lock

A checkpoint is complete when its state.json exists (the trainer writes a
checkpoint in a temporary folder and renames it into place, so a step-* folder
without it is still being written or broken: skipped until it is whole).
Watchers coordinate through flock(2) locks, which the kernel drops when a process
dies: a watcher takes a checkpoint's lock without waiting (another watcher has it:
skip), re-reads the state (someone finished it: skip), evaluates, writes the
results file atomically, then commits the row to state.json under state.lock. A
watcher killed mid-evaluation has committed nothing, so the next run redoes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from llmctl.errors import LlmctlError
from llmctl.fsutil import atomic_write_text

PRIMARY = ("perplexity", "loss", "bits_per_byte", "acc", "acc_norm", "exact_match")


class EvalDir:
    """The eval folder of a run: one class owns its layout."""

    def __init__(self, run_dir: str | Path):
        self.run = Path(run_dir).absolute()
        self.path = self.run / "eval"

    state = property(lambda self: self.path / "state.json")
    table = property(lambda self: self.path / "results.jsonl")
    plot = property(lambda self: self.path / "metrics.png")
    locks = property(lambda self: self.path / "locks")

    def results_file(self, key: str) -> Path:
        return self.path / "results" / f"{key.replace('/', '_')}.json"

    def read_state(self) -> dict[str, Any]:
        if not self.state.is_file():
            return {"version": 1, "done": {}}
        try:
            data = json.loads(self.state.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LlmctlError(f"{self.state}: unreadable watcher state: {e}",
                              hint="remove it to evaluate every checkpoint again") from None
        return data


@contextmanager
def flock(path: Path, wait: bool) -> Iterator[bool]:
    """An exclusive flock on `path`; yields False (without waiting) when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def complete_checkpoints(run_dir: Path) -> list[tuple[str, Path]]:
    """(key, folder) of every complete checkpoint, array tasks included, oldest first."""
    from llmctl.train.checkpoint import STATE

    root = run_dir / "checkpoints"
    found = []
    for folder in [root, *sorted(root.glob("task-*"))] if root.is_dir() else []:
        for p in sorted(folder.glob("step-*")):
            if (p / STATE).is_file():
                found.append((str(p.relative_to(root)), p))
    return found


def row_of(key: str, ckpt: Path, results: dict[str, Any], results_path: Path) -> dict[str, Any]:
    """One row of the results table: step, checkpoint, and each task's metrics."""
    row: dict[str, Any] = {"checkpoint": key, "step": results["config"].get("step"),
                           "results": str(results_path), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for task, res in results["results"].items():
        for k, v in res.items():
            # "acc_stderr,none" too: the plot draws it as the error bar of "acc"
            if "," in k and ("_stderr," not in k or isinstance(v, (int, float))):
                row[f"{task}/{k.split(',')[0]}"] = v
    return row


def _metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The task/metric columns of the rows, without their standard errors."""
    return sorted({k for r in rows for k in r if "/" in k and not k.endswith("_stderr")
                   and isinstance(r[k], (int, float))})


def commit(ed: EvalDir, key: str, row: dict[str, Any]) -> None:
    """Record `row` in the state (the commit point), then redraw the table and the plot."""
    with flock(ed.locks / "state.lock", wait=True):
        state = ed.read_state()
        state["done"][key] = row
        atomic_write_text(ed.state, json.dumps(state, indent=2) + "\n")
        rows = sorted(state["done"].values(), key=lambda r: (r.get("step") or 0, r["checkpoint"]))
        atomic_write_text(ed.table, "".join(json.dumps(r) + "\n" for r in rows))
    try:
        plot_metrics(rows, ed.plot)
    except LlmctlError:
        pass  # no matplotlib: the table is the result; the picture is a convenience


def plot_metrics(rows: list[dict[str, Any]], out: Path) -> Optional[Path]:
    """Each task metric against the step, one panel per metric (see `metrics_figure`)."""
    from llmctl.charts import save

    fig = metrics_figure(rows)
    return save(fig, out) if fig is not None else None


def metrics_figure(rows: list[dict[str, Any]]) -> Any:
    """Each task metric against the checkpoint's step, one panel per metric, with the
    bootstrap/analytic standard error the results carry as an error bar (± 1 s.e.)."""
    from llmctl.charts import _pyplot

    keys = _metric_keys(rows)
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(keys), 1, figsize=(7.2, 2.4 * len(keys)), squeeze=False)
    for ax, k in zip(axes[:, 0], keys):
        pts = sorted((r["step"], r[k], r.get(f"{k}_stderr")) for r in rows
                     if isinstance(r.get(k), (int, float)) and r.get("step") is not None)
        if pts:
            steps, vals, errs = zip(*pts)
            yerr = [e if isinstance(e, (int, float)) else 0.0 for e in errs]
            ax.errorbar(steps, vals, yerr=yerr if any(yerr) else None, fmt="o-", markersize=4, capsize=3,
                        color="tab:blue", ecolor="tab:gray", label=f"{k.split('/')[1]} ± 1 standard error")
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0.0)
        metric = k.split("/")[1]
        ax.set(ylabel=f"{metric} ({UNITS.get(metric, 'fraction')})", title=k)
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("checkpoint step")
    fig.tight_layout()
    return fig


# What each metric counts (its axis label).
UNITS = {"perplexity": "per token", "loss": "nats/token", "bits_per_byte": "bits/byte"}


def watch(run_dir: str | Path, evaluate: Callable[[Path, Path], dict[str, Any]],
          log: Callable[[str], None] = lambda s: None) -> dict[str, list[str]]:
    """Evaluate each complete, not yet evaluated checkpoint of `run_dir` once.

    `evaluate(checkpoint, results_path)` runs the suite and writes the results file;
    returns what happened: {"evaluated": [...], "skipped": [...], "busy": [...], "failed": [...]}.
    """
    run, ed = _eval_dir(run_dir)
    out: dict[str, list[str]] = {"evaluated": [], "skipped": [], "busy": [], "failed": []}
    for key, ckpt, _ in _claim_each(run, ed, out, log):
        if not ckpt.is_dir():
            continue  # pruned by the trainer meanwhile
        log(f"{key}: evaluating")
        path = ed.results_file(key)
        try:
            results = evaluate(ckpt, path)
        except LlmctlError as e:
            # One bad checkpoint must not stop the others; the next run tries it again.
            log(f"{key}: failed: {e.message}")
            out["failed"].append(key)
            continue
        commit(ed, key, row_of(key, ckpt, results, path))
        out["evaluated"].append(key)
    return out


def _eval_dir(run_dir: str | Path) -> tuple[Path, "EvalDir"]:
    run = Path(run_dir)
    if not run.is_dir():
        raise LlmctlError(f"{run}: run folder not found")
    return run, EvalDir(run)


def _claim_each(run: Path, ed: "EvalDir", out: dict[str, list[str]], log: Callable[[str], None]):
    """(key, checkpoint, state) of each complete checkpoint not yet evaluated, holding its
    lock while the caller works on it; the ones done or held by another watcher are
    counted in `out` ("skipped", "busy") instead."""
    for key, ckpt in complete_checkpoints(run):
        if key in ed.read_state()["done"]:
            out["skipped"].append(key)
            continue
        with flock(ed.locks / f"{key.replace('/', '_')}.lock", wait=False) as got:
            if not got:
                log(f"{key}: another watcher is evaluating it")
                out["busy"].append(key)
                continue
            # Re-read under the lock: another watcher may have finished it just now.
            state = ed.read_state()
            if key in state["done"]:
                out["skipped"].append(key)
                continue
            yield key, ckpt, state


def watch_submit(run_dir: str | Path, submit: Callable[[str, Path, Path, Path], str],
                 log: Callable[[str], None] = lambda s: None) -> dict[str, list[str]]:
    """Like `watch`, but each evaluation runs as a job: `submit(key, checkpoint, results_path,
    job_dir)` submits one and returns its id. A later run commits the rows of the jobs
    whose results file has appeared; a checkpoint is submitted once (under its lock)."""
    run, ed = _eval_dir(run_dir)
    out: dict[str, list[str]] = {"evaluated": [], "submitted": [], "pending": [], "skipped": [], "busy": []}
    for key, ckpt, state in _claim_each(run, ed, out, log):
        path = ed.results_file(key)
        job = state.get("submitted", {}).get(key)
        if job and path.is_file():
            results = json.loads(path.read_text(encoding="utf-8"))
            commit(ed, key, row_of(key, ckpt, results, path))
            out["evaluated"].append(key)
            continue
        if job:
            out["pending"].append(key)
            continue
        job_dir = ed.path / "jobs" / f"{key.replace('/', '_')}-{int(time.time())}"
        job_id = submit(key, ckpt, path, job_dir)
        log(f"{key}: submitted job {job_id} ({job_dir})")
        with flock(ed.locks / "state.lock", wait=True):
            state = ed.read_state()
            state.setdefault("submitted", {})[key] = {"job_id": job_id, "job_dir": str(job_dir)}
            atomic_write_text(ed.state, json.dumps(state, indent=2) + "\n")
        out["submitted"].append(key)
    return out


def read_table(table: Path) -> list[dict[str, Any]]:
    """The rows of the results table (results.jsonl), one per evaluated checkpoint."""
    return [json.loads(line) for line in table.read_text(encoding="utf-8").splitlines() if line.strip()]


def format_table(table: Path) -> str:
    """The results table as aligned text: one line per checkpoint, one column per metric."""
    rows = read_table(table)
    cols = _metric_keys(rows)
    head = ["step", *cols]
    body = [[str(r.get("step"))] + [f"{r[c]:.4g}" if isinstance(r.get(c), (int, float)) else "-" for c in cols]
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *body])
