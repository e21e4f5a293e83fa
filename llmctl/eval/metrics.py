"""Metric aggregation and bootstrap standard errors.

Every metric is an aggregate over per-document items; its standard error is the
standard deviation of that aggregate over `iters` resamples of the documents with
replacement (Efron's bootstrap), as lm-evaluation-harness reports for metrics
without a closed form. Resampling is vectorised with numpy and seeded, so a result
file is reproducible.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "exact_match": True,
                    "perplexity": False, "loss": False, "bits_per_byte": False}


def mean(values):
    """Mean along the last axis (works on one sample or a stack of resamples)."""
    return values.mean(axis=-1)


def perplexity_parts(nll, tokens, nbytes):
    """Aggregates of (summed nll, token count, byte count) per document, along the last axis."""
    import numpy as np

    total_nll, total_tok, total_bytes = nll.sum(-1), tokens.sum(-1), nbytes.sum(-1)
    loss = total_nll / np.maximum(total_tok, 1)
    return {"loss": loss, "perplexity": np.exp(loss),
            "bits_per_byte": total_nll / (math.log(2) * np.maximum(total_bytes, 1))}


def bootstrap(columns: Sequence, agg: Callable, iters: int, seed: int):
    """Standard deviation of `agg` over `iters` resamples of the rows of `columns`."""
    import numpy as np

    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    n = len(cols[0])
    if iters <= 1 or n < 2:
        return None
    rng = np.random.default_rng(seed)
    out = []
    # Chunks bound memory: iters x n indices at once can be large for big tasks.
    chunk = max(1, min(iters, 2_000_000 // n))
    for s in range(0, iters, chunk):
        idx = rng.integers(0, n, size=(min(chunk, iters - s), n))
        out.append(agg(*[c[idx] for c in cols]))
    stats = np.concatenate(out) if not isinstance(out[0], dict) else None
    if stats is None:  # a dict of aggregates: one stderr per key
        return {k: float(np.std(np.concatenate([o[k] for o in out]), ddof=1)) for k in out[0]}
    return float(np.std(stats, ddof=1))
