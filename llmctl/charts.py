"""Pictures llmctl writes next to its results: the loss curve and the plan's breakdown.

Drawn with matplotlib (the `plot` extra, also in `train`) on its Agg backend, so no
display is needed; imported inside each function so that nothing on the login
node's fast path pays for it. Each `*_figure` function returns the figure (the tests
inspect it); the caller saves it atomically (temp + rename) with `save`.

One colour per meaning in every picture (`COLOURS`): a memory part and a time part
never share a colour unless they are the same thing (the optimizer), and legends sit
outside the axes, so they cover no bar or line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from llmctl.errors import LlmctlError

# Memory parts (the plan's memory_per_stage) and time parts (its time_breakdown_s).
COLOURS = {
    "weights": "#1f77b4", "gradients": "#ff7f0e", "optimizer": "#2ca02c", "activations": "#9467bd",
    "other": "#7f7f7f",
    "compute": "#17becf", "memory_bound": "#bcbd22", "tp_comm": "#d62728", "cp_comm": "#ff9896",
    "recompute": "#c5b0d5", "zero3_comm": "#98df8a", "head": "#aec7e8", "p2p": "#e377c2",
    "pipeline_bubble": "#8c564b", "dp_comm": "#ffbb78",
}
CAPACITY = "black"
RESTART = "#7f7f7f"
PREEMPT = "#d62728"


def colour(part: str) -> str:
    """The part's colour; a part without its own (a newer planner's) gets a stable grey-blue."""
    return COLOURS.get(part, "#5f7f9f")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise LlmctlError("drawing a PNG needs matplotlib",
                          hint="pip install 'llmctl[plot]' (the train extra includes it)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        # bbox "tight": the legends outside the axes are part of the picture.
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def save(fig: Any, out: Path) -> Path:
    """Write the figure as a PNG (atomically) and close it."""
    plt = _pyplot()
    try:
        return _save(fig, out)
    finally:
        plt.close(fig)


def _legend_outside(ax: Any, **kw: Any) -> Any:
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, **kw)


# --- the loss curve ------------------------------------------------------------------

def loss_figure(train: Sequence[tuple[int, float]], val: Sequence[tuple[int, float]], title: str = "loss",
                restarts: Sequence[int] = (), stops: Sequence[tuple[int, str]] = ()) -> Any:
    """Training loss (line) and validation loss (markers) against the step; a dashed line at
    each step a run resumed from (a restart), a dotted one where a run was stopped
    (preempted or cancelled) and not finished."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    if train:
        ax.plot(*zip(*train), color="tab:blue", linewidth=1.2, label="training loss")
    if val:
        ax.plot(*zip(*val), "s-", color="tab:red", markersize=5, linewidth=1, label="validation loss")
    for i, (step, why) in enumerate(stops):
        ax.axvline(step, color=PREEMPT, linestyle=":", linewidth=1.2,
                   label="run stopped (preempted / cancelled)" if i == 0 else None, gid=f"stop-{step}-{why}")
    for i, step in enumerate(restarts):
        ax.axvline(step, color=RESTART, linestyle="--", linewidth=1.2,
                   label="restart (resumed from a checkpoint)" if i == 0 else None, gid=f"restart-{step}")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats/token)", title=title)
    ax.grid(True, alpha=0.3)
    if train or val:
        _legend_outside(ax)
    return fig


def loss_curve(train: Sequence[tuple[int, float]], val: Sequence[tuple[int, float]], out: Path,
               title: str = "loss", restarts: Sequence[int] = (),
               stops: Sequence[tuple[int, str]] = ()) -> Path:
    """`loss_figure`, written to `out`."""
    return save(loss_figure(train, val, title, restarts, stops), out)


# --- the plan ------------------------------------------------------------------------

def plan_figure(memory: dict[str, dict[str, float]], capacity_gb: Optional[float], memory_title: str,
                time_parts: dict[str, float], time_title: str, unit: str = "GPU") -> Any:
    """Left: memory per pipeline stage (stacked parts, GB) with a line at the device's
    memory. Right: where the step time goes, one horizontal bar per part with its seconds
    and share written beside it (a part of 0.1 % stays readable), largest first."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.2]})
    stages = list(memory)
    parts = [p for p in dict.fromkeys(k for v in memory.values() for k in v)
             if any(memory[s].get(p, 0) > 0 for s in stages)]
    bottom = [0.0] * len(stages)
    for part in parts:
        vals = [memory[s].get(part, 0.0) for s in stages]
        left.bar(stages, vals, bottom=bottom, label=part, color=colour(part), gid=f"memory-{part}")
        bottom = [x + y for x, y in zip(bottom, vals)]
    top = max(bottom, default=0.0)
    if capacity_gb:
        left.axhline(capacity_gb, color=CAPACITY, linestyle="--", linewidth=1.5,
                     label=f"{unit} memory ({capacity_gb:g} GB)", gid="capacity")
        top = max(top, capacity_gb)
    left.set_ylim(0, top * 1.12 or 1.0)
    left.set(title=memory_title, ylabel=f"memory per {unit} (GB)", xlabel="pipeline stage")
    left.grid(True, axis="y", alpha=0.3)
    if parts or capacity_gb:
        _legend_outside(left)

    items = sorted(((k, v) for k, v in time_parts.items() if v > 0), key=lambda kv: kv[1])
    total = sum(v for _, v in items) or 1.0
    names = [k for k, _ in items]
    vals = [v for _, v in items]
    bars = right.barh(names, vals, color=[colour(k) for k in names])
    for name, bar in zip(names, bars):
        bar.set_gid(f"time-{name}")
    right.bar_label(bars, labels=[f"{_seconds(v)} ({share(v / total)})" for v in vals], padding=3, fontsize=8)
    right.set_xlim(0, (max(vals, default=1.0)) * 1.35)  # room for the labels
    right.set(title=time_title, xlabel="seconds per optimizer step")
    right.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def share(x: float) -> str:
    """A fraction as a percentage that never rounds a real part to 0.0 %."""
    return f"{x:.1%}" if x >= 0.001 else f"{x * 100:.2g}%"


def _seconds(v: float) -> str:
    return f"{v:.3g} s" if v >= 0.1 else f"{v * 1e3:.3g} ms" if v >= 1e-4 else f"{v * 1e6:.3g} µs"
