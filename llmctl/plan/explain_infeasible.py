"""When nothing fits: name the binding constraint and the smallest change that would fit.

Tried in order of how little they ask of the user: let the solver pick the ZeRO
stage and recomputation (if they were pinned), then more memory per GPU, then
more GPUs. Each probe is a real (smaller) search, so a suggestion is a plan.
"""

from __future__ import annotations

from dataclasses import replace

from llmctl.errors import LlmctlError
from llmctl.plan.cluster import Cluster
from llmctl.plan.cost import Workload
from llmctl.plan.search import Fixed, SearchOutcome, search


def _fits(w: Workload, cl: Cluster, fx: Fixed) -> bool:
    return bool(search(w, cl, fx, top=0, time_limit=20.0, max_iterations=60).plans)


def explain(w: Workload, cl: Cluster, fx: Fixed, outcome: SearchOutcome) -> None:
    """Raise an LlmctlError saying why no layout fits and what would."""
    sh = w.shape
    empty = outcome.stats.get("empty")
    if empty:
        why = {
            "tp/cp": f"no tensor-parallel degree divides heads={sh.heads}, kv_heads={sh.kv_heads} and the "
                     f"{cl.gpus} GPUs while staying inside a {cl.gpus_per_node}-GPU node",
            "pp/vpp/micro_batch": f"no pipeline degree <= {sh.layers} layers divides the {cl.gpus} GPUs",
            "dp/zero": f"no data-parallel degree divides both the {cl.gpus} GPUs and the global batch "
                       f"{w.global_batch}",
        }
        raise LlmctlError("no layout is possible: " + "; ".join(why[e] for e in empty),
                          hint="choose a global batch that is a multiple of the GPU count (--global-batch), "
                               "or a pinned degree that divides it")
    if not outcome.master_feasible and _divisibility_only(w, cl, fx):
        raise LlmctlError(f"no layout is possible: the pinned degrees and the global batch {w.global_batch} "
                          f"cannot be combined on {cl.gpus} GPUs (the rules: tp*cp*pp*dp = GPUs; dp*micro_batch "
                          "divides the global batch; pp*vpp <= layers; with vpp > 1, the micro-batches per "
                          "step, global_batch/(dp*micro_batch), are a multiple of pp)",
                          hint="change --global-batch or the pinned --tp/--pp/--dp/--cp/--vpp/--micro-batch")
    params_b = sh.params_total / 1e9
    head = (f"{params_b:.2f}B parameters do not fit in {cl.memory_gb:g} GB per GPU on {cl.gpus} GPUs "
            f"(binding: memory per pipeline stage)")
    binding = _binding(w, cl, fx)
    if binding:
        head = binding
    tips = []
    if fx.zero is not None and fx.zero < 3 or fx.recompute not in (None, "full"):
        relaxed = replace(fx, zero=None, recompute=None)
        if _fits(w, cl, relaxed):
            tips.append("drop --zero-stage/--recompute (a higher ZeRO stage or full recomputation fits)")
    if not tips:
        for factor in (1.25, 1.5, 2.0, 3.0, 4.0):
            if _fits(w, cl.with_memory(cl.memory_gb * factor), fx):
                tips.append(f"--max-memory-gb {cl.memory_gb * factor:g} (GPUs with that much memory)")
                break
        for mult in (2, 4, 8, 16, 32, 64):
            nodes = cl.nodes * mult
            if _fits(replace(w, global_batch=max(w.global_batch, nodes * cl.gpus_per_node)),
                     cl.with_nodes(nodes), replace(fx, dp=None)):
                tips.append(f"--nodes {nodes} ({nodes * cl.gpus_per_node} GPUs"
                            + (f", global batch >= {nodes * cl.gpus_per_node}" if w.global_batch
                               < nodes * cl.gpus_per_node else "") + ")")
                break
    hint = "smallest change that fits: " + " or ".join(tips) if tips else \
        "it does not fit even with 4x the memory or 64x the nodes; check the model config"
    raise LlmctlError(head, hint=hint)


def _binding(w: Workload, cl: Cluster, fx: Fixed):
    """For a pinned layout (tp, pp and dp given), what fills the fullest stage: model state or
    activations, in GB, with an even split of the blocks. None when the layout is not pinned."""
    from llmctl.plan.cost import Config, coefficients, evaluate
    from llmctl.plan.search import spread

    if not (fx.tp and fx.pp and fx.dp):
        return None
    cfg = Config(tp=fx.tp, cp=fx.cp or 1, pp=fx.pp, dp=fx.dp, vpp=fx.vpp or 1, mb=fx.mb or 1,
                 zero=3 if fx.zero is None and fx.dp > 1 else (fx.zero or 0), recompute=fx.recompute or "full")
    L = w.shape.layers
    if cfg.pp * cfg.vpp > L or w.global_batch % (cfg.dp * cfg.mb) or cfg.tp * cfg.cp * cfg.pp * cfg.dp != cl.gpus:
        return None
    co = coefficients(w, cl, cfg)
    per_rank = [L // cfg.pp + (1 if r < L % cfg.pp else 0) for r in range(cfg.pp)]
    layers = spread(per_rank, cfg.vpp)
    ev = evaluate(co, layers, layers if cfg.recompute in ("full", "partial") else None)
    stage = max(range(cfg.pp), key=lambda r: ev.memory[r]["total"])
    m = ev.memory[stage]
    state = m["weights"] + m["gradients"] + m["optimizer"]
    what = "activations" if m["activations"] > state else "parameters (weights, gradients, optimizer state)"
    return (f"the layout tp={cfg.tp} pp={cfg.pp} dp={cfg.dp} cp={cfg.cp} (ZeRO {cfg.zero}, recompute "
            f"{cfg.recompute}, micro-batch {cfg.mb}, {w.attention} attention) needs {m['total'] / 1e9:.1f} GB on "
            f"pipeline stage {stage}, more than the {cl.memory_gb:g} GB per GPU: {what} bind "
            f"(activations {m['activations'] / 1e9:.1f} GB, model state {state / 1e9:.1f} GB, "
            f"allowance {m['other'] / 1e9:.1f} GB)")


def _divisibility_only(w: Workload, cl: Cluster, fx: Fixed) -> bool:
    """True when even unlimited memory leaves no layout (so memory is not what binds)."""
    return not _fits(w, cl.with_memory(1e6), fx)
