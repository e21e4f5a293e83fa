"""How sensitive a costed layout's step time is to each constant of the cost model.

For the chosen layout (degrees and stage split fixed), each constant is raised by 1% and
the layout re-costed: the elasticity d ln(step) / d ln(constant) says how much of a
constant's error reaches the prediction (-1: the step time is inversely proportional to
it, as compute to the sustained rate; 0: it does not matter here). With the time
breakdown this tells which terms dominate and which constants to measure first
(`hw benchmark` fills `measured` for the sustained rate, HBM and intra-node bandwidth).
"""

from __future__ import annotations

from dataclasses import replace

from llmctl.plan import comm, cost
from llmctl.plan.cluster import Cluster
from llmctl.plan.cost import Workload, coefficients, evaluate

STEP = 0.01

# cluster fields: (name shown, field)
CLUSTER = (("sustained fraction of peak", "sustained"), ("intra-node bus bandwidth", "intra_bw"),
           ("inter-node bandwidth per GPU", "inter_bw"), ("HBM bandwidth", "hbm_bw"),
           ("collective step latency", "latency_s"))
# module constants of the cost model: (module, name shown, constant)
MODULE = ((cost, "GEMM half-width", "GEMM_HALF_WIDTH"), (cost, "TP exposure", "TP_EXPOSED"),
          (cost, "TP exposure under overlap", "TP_OVERLAP_EXPOSED"),
          (cost, "overlapped DP / pipeline traffic share", "DP_EXPOSED"), (cost, "ZeRO-3 exposure under overlap", "ZERO3_OVERLAP_EXPOSED"),
          (cost, "CP exposure", "CP_EXPOSED"), (comm, "network bus efficiency", "NET_BUS_EFFICIENCY"),
          (cost, "FP8 GEMM share of the sustained rate", "FP8_SUSTAINED"))


def _step(w: Workload, cl: Cluster, res) -> float:
    return evaluate(coefficients(w, cl, res.cfg), res.layers, res.recomputed).step_time


def sensitivity(w: Workload, cl: Cluster, res) -> dict:
    """{'dominant': [(part, share)], 'elasticity': {constant: d ln step / d ln constant}}."""
    base = _step(w, cl, res)
    out = {}
    for label, field in CLUSTER:
        out[label] = (_step(w, replace(cl, **{field: getattr(cl, field) * (1 + STEP)}), res) / base - 1) / STEP
    for mod, label, name in MODULE:
        old = getattr(mod, name)
        try:
            setattr(mod, name, old * (1 + STEP))
            out[label] = (_step(w, cl, res) / base - 1) / STEP
        finally:
            setattr(mod, name, old)
    parts = res.evaluation.parts
    total = sum(parts.values()) or 1.0
    dominant = sorted(((k, v / total) for k, v in parts.items() if v > 0), key=lambda x: -x[1])
    return {"step_time_s": base, "dominant": dominant,
            "elasticity": dict(sorted(out.items(), key=lambda x: -abs(x[1])))}
