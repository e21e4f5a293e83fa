"""The learning rate at each optimizer step: linear warm-up, then cosine, linear or constant.

A pure function of the step, so a resumed run needs no scheduler state beyond the
step itself (and a checkpoint holds no pickled scheduler object).
"""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, warmup: int, max_steps: int, kind: str, min_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if kind == "constant":
        return peak
    low = peak * min_ratio
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if kind == "linear":
        return peak - (peak - low) * progress
    return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
