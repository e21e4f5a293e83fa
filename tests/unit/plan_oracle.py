"""The test oracle: exhaustive enumeration over the planner's cost model (never used by the planner).

Every degree combination the rules allow, every split of the blocks over the
pipeline ranks, and on each rank the fewest recomputed blocks that fit (time
grows and memory shrinks with each recomputed block, so fewer is always better).
"""

from __future__ import annotations

import itertools
import math

from llmctl.plan.cost import RECOMPUTE_MODES, Config, coefficients, evaluate


def compositions(total: int, parts: int, least: int):
    if parts == 1:
        if total >= least:
            yield (total,)
        return
    for first in range(least, total - least * (parts - 1) + 1):
        for rest in compositions(total - first, parts - 1, least):
            yield (first,) + rest


def best(w, cl, fixed=None, max_vpp=4, max_mb=16, min_cp_tokens=4096):
    """The least step time over every layout (those matching `fixed`'s pinned degrees), or inf."""
    sh, N, B = w.shape, cl.gpus, w.global_batch
    pins = {k: v for k, v in vars(fixed).items() if v is not None and k != "tp_across_nodes"} if fixed else {}
    best_t = math.inf
    for tp, cp, pp in itertools.product(range(1, N + 1), repeat=3):
        if N % (tp * cp * pp):
            continue
        dp = N // (tp * cp * pp)
        if sh.heads % tp or sh.kv_heads % tp or cl.gpus_per_node % tp or pp > sh.layers:
            continue
        if cp > 1 and (w.seq_len % cp or w.seq_len // cp < min_cp_tokens):
            continue
        for v, mb, zero, rec in itertools.product(range(1, max_vpp + 1), range(1, max_mb + 1), range(4),
                                                  RECOMPUTE_MODES):
            if (v > 1 and pp == 1) or pp * v > sh.layers or (dp == 1 and zero and "zero" not in pins):
                continue
            if v > 1 and w.engine == "deepspeed":  # DeepSpeed's pipeline engine does not interleave
                continue
            chosen = dict(tp=tp, cp=cp, pp=pp, dp=dp, vpp=v, mb=mb, zero=zero, recompute=rec)
            if any(chosen[k] != x for k, x in pins.items()):
                continue
            if rec == "selective" and w.attention == "flash" and "recompute" not in pins:
                continue  # dominated under a fused kernel: tried only when pinned (search.free_recompute_modes)
            # dp * micro_batch divides the batch; only the interleaved schedule needs m % pp == 0
            if B % (dp * mb) or (v > 1 and (B // (dp * mb)) % pp):
                continue
            co = coefficients(w, cl, Config(tp=tp, cp=cp, pp=pp, dp=dp, vpp=v, mb=mb, zero=zero, recompute=rec))
            for split in compositions(sh.layers, pp, v):
                layers = [0] * (pp * v)
                for s, n in enumerate(split):
                    for k in range(v):  # how a rank's blocks sit on its chunks does not change the cost
                        layers[k * pp + s] = n // v + (1 if k < n % v else 0)
                if rec == "partial":
                    cands = _partial(co, layers, sh.layers)
                else:  # "full" recomputes every block (its coefficients say so)
                    cands = [layers if rec == "full" else [0] * len(layers)]
                for rec_layers in cands:
                    ev = evaluate(co, layers, rec_layers)
                    if ev.fits and ev.step_time < best_t:
                        best_t = ev.step_time
    return best_t


def _partial(co, layers, total):
    """Partial recomputation: the fewest recomputed blocks per rank that fit, at least one
    and at most total - 1 in all; with none needed, one block on each rank in turn."""
    fewest = _fewest_recomputed(co, layers)
    if fewest is None or sum(fewest) > total - 1:
        return []
    if sum(fewest) >= 1:
        return [fewest]
    out = []
    for j in range(len(layers)):
        if layers[j]:
            trial = [0] * len(layers)
            trial[j] = 1
            out.append(trial)
    return out


def _fewest_recomputed(co, layers):
    p = co.cfg.pp
    out = [0] * len(layers)
    for s in range(p):
        chunks = [j for j in range(len(layers)) if j % p == s]
        n = sum(layers[j] for j in chunks)
        for r in range(n + 1):
            trial = list(out)
            left = r
            for j in chunks:
                trial[j] = min(layers[j], left)
                left -= trial[j]
            ev = evaluate(co, layers, trial)
            if ev.memory[s]["fits"]:
                out = trial
                break
        else:
            return None
    return out
