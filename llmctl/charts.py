"""Pictures llmctl writes next to its results: the loss curve and the plan's breakdown.

Drawn with matplotlib (the `plot` extra, also in `train`) on its Agg backend, so no
display is needed; imported inside each function so that nothing on the login
node's fast path pays for it. Each picture is written atomically (temp + rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from llmctl.errors import LlmctlError


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
        fig.savefig(tmp, format="png", dpi=100)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def loss_curve(train: Sequence[tuple[int, float]], val: Sequence[tuple[int, float]], out: Path,
               title: str = "loss") -> Path:
    """Training loss (line) and validation loss (markers) against the step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    try:
        if train:
            ax.plot(*zip(*train), color="tab:blue", linewidth=1.2, label="training loss")
        if val:
            ax.plot(*zip(*val), "s-", color="tab:red", markersize=5, linewidth=1, label="validation loss")
        ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
        ax.grid(True, alpha=0.3)
        if train or val:
            ax.legend()
        fig.tight_layout()
        return _save(fig, out)
    finally:
        plt.close(fig)


def stacked_bars(title: str, ylabel: str, bars: dict[str, dict[str, float]], out: Path,
                 second: tuple[str, str, dict[str, float]] | None = None) -> Path:
    """Stacked bars (bar label -> part -> value), with an optional second panel of one bar.

    `second` is (title, ylabel, part -> value): used by `plan explain` for where the
    step time goes beside the memory of each pipeline stage.
    """
    plt = _pyplot()
    ncols = 2 if second else 1
    fig, axes = plt.subplots(1, ncols, figsize=(10 if second else 6.5, 4.5), squeeze=False)
    try:
        panels = [(axes[0][0], title, ylabel, bars)]
        if second:
            panels.append((axes[0][1], second[0], second[1], {"step": second[2]}))
        for ax, t, yl, data in panels:
            labels = list(data)
            parts = [p for p in dict.fromkeys(k for v in data.values() for k in v) if
                     any(data[b].get(p, 0) > 0 for b in labels)]
            bottom = [0.0] * len(labels)
            for part in parts:
                vals = [data[b].get(part, 0.0) for b in labels]
                ax.bar(labels, vals, bottom=bottom, label=part)
                bottom = [x + y for x, y in zip(bottom, vals)]
            ax.set(title=t, ylabel=yl)
            ax.grid(True, axis="y", alpha=0.3)
            if parts:
                ax.legend(fontsize=8)
        fig.tight_layout()
        return _save(fig, out)
    finally:
        plt.close(fig)
