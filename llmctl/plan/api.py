"""`plan compute` as a library call: read the inputs, search, and build the PlanFile.

Precedence (stated once): command-line flag > hardware profile > site-config > defaults.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError
from llmctl.plan.cluster import Cluster
from llmctl.plan.cost import Config, Workload, dp_overlapped
from llmctl.plan.search import Fixed, Result, SearchOutcome, search

GB = 1e9


@dataclass
class Request:
    model: str
    hardware: Optional[str] = None
    site: Optional[str] = None
    nodes: Optional[int] = None
    gpus_per_node: Optional[int] = None
    seq_len: Optional[int] = None
    global_batch: Optional[int] = None
    target_flops: Optional[float] = None
    max_memory_gb: Optional[float] = None
    max_comm_bw_gbps: Optional[float] = None
    peak_tflops: Optional[float] = None
    strategy: str = "auto"
    fixed: Fixed = None  # type: ignore[assignment]
    top: int = 3
    time_limit: float = 60.0
    train: Optional[str] = None  # a training config: global batch and sequence length
    attention: str = "flash"  # the attention kernel the run uses: flash (fused, SDPA) or eager
    precision: str = "bf16"  # bf16, or fp8 (Transformer Engine: linear layers' GEMMs in FP8)
    tp_overlap: bool = False  # TP collectives overlapped with GEMMs (Megatron-Core --tp-comm-overlap); default off
    dp_overlap: Optional[bool] = None  # gradient reduction beside the last backward (DDP/FSDP); off: after
    # it; None: the engine's default (cost.dp_overlapped)
    sequence_parallel: bool = True  # norms/dropout/residuals split over the TP group
    engine: str = "megatron"  # the framework whose mechanisms are costed (cost.ENGINES)


def _sha(path: Optional[str]) -> Optional[str]:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def load_inputs(req: Request):
    """(model config, Cluster, Workload) from the request's files and flags."""
    from llmctl.config.base import load_config
    from llmctl.config.hardware import HardwareProfile
    from llmctl.config.model import ModelConfig
    from llmctl.plan.cluster import build_cluster
    from llmctl.plan.model_costs import LayerShape

    model = load_config(req.model, ModelConfig)
    profile = load_config(req.hardware, HardwareProfile) if req.hardware else None
    site = None
    if req.site:
        from llmctl.sites import load_site

        site, _ = load_site(req.site)
    nodes = req.nodes or (profile.cluster.nodes if profile is not None else None) or 1
    cl = build_cluster(profile, site, nodes=nodes, gpus_per_node=req.gpus_per_node,
                       max_memory_gb=req.max_memory_gb, peak_tflops=req.peak_tflops,
                       target_flops=req.target_flops, max_comm_bw_gbps=req.max_comm_bw_gbps,
                       profile_path=req.hardware or "hardware profile")
    seq, gb = req.seq_len, req.global_batch
    if req.train:  # what the run will use, unless a flag says otherwise
        from llmctl.config.train import TrainConfig

        tc = load_config(req.train, TrainConfig)
        seq = seq or tc.data.seq_len
        gb = gb or tc.parallel.global_batch_size
    seq = seq or model.max_seq_len
    gb = gb or max(cl.gpus, 1)
    if req.precision == "fp8" and not cl.fp8_flops:
        raise LlmctlError(f"--precision fp8: {cl.gpu_name} has no FP8 tensor rate in llmctl's accelerator table",
                          hint="FP8 training (Transformer Engine) needs Hopper, Ada or Blackwell GPUs; "
                               "use --precision bf16")
    return model, cl, Workload(LayerShape.of(model), seq, gb, req.attention, req.precision, req.tp_overlap,
                               dp_overlap=req.dp_overlap, sequence_parallel=req.sequence_parallel,
                               engine=req.engine)


def check_fixed(fx: Fixed, cl: Cluster, w: Workload, strategy: str) -> None:
    """Contradictions among pinned degrees, each spelled out (exit 2)."""
    sh = w.shape
    if fx.tp and (sh.heads % fx.tp or sh.kv_heads % fx.tp):
        raise LlmctlError(f"--tp {fx.tp} does not divide the model's heads ({sh.heads}) and KV heads "
                          f"({sh.kv_heads})", hint="tensor parallelism splits whole heads; pick a common divisor")
    degs = [x for x in (fx.tp, fx.pp, fx.dp, fx.cp) if x]
    prod = 1
    for x in degs:
        prod *= x
    if all((fx.tp, fx.pp, fx.dp, fx.cp)) and prod != cl.gpus:
        raise LlmctlError(f"tp*pp*dp*cp = {fx.tp}*{fx.pp}*{fx.dp}*{fx.cp} = {prod} != "
                          f"nodes*gpus_per_node = {cl.nodes}*{cl.gpus_per_node} = {cl.gpus}")
    if cl.gpus % prod:
        raise LlmctlError(f"tp*pp*dp*cp = {fx.tp or '?'}*{fx.pp or '?'}*{fx.dp or '?'}*{fx.cp or '?'} = {prod} "
                          f"(pinned part) does not divide the {cl.gpus} GPUs "
                          f"(nodes*gpus_per_node = {cl.nodes}*{cl.gpus_per_node})")
    if fx.pp and fx.pp > sh.layers:
        raise LlmctlError(f"--pp {fx.pp} exceeds the model's {sh.layers} layers")
    if fx.vpp and fx.vpp > 1:
        if w.engine == "deepspeed":
            raise LlmctlError(f"--vpp {fx.vpp}: DeepSpeed's pipeline engine runs 1F1B without interleaving "
                              f"(its TrainSchedule); --engine deepspeed takes --vpp 1 only",
                              hint="use --vpp 1, or --engine megatron for the interleaved schedule")
        if fx.pp == 1:
            raise LlmctlError(f"--vpp {fx.vpp} needs a pipeline (--pp > 1): virtual stages interleave pipeline ranks")
        if fx.pp and fx.pp * fx.vpp > sh.layers:
            raise LlmctlError(f"pp*vpp = {fx.pp}*{fx.vpp} = {fx.pp * fx.vpp} virtual stages exceed the model's "
                              f"{sh.layers} layers (each holds at least one)")
        if fx.pp and fx.dp and fx.mb and w.global_batch % (fx.mb * fx.dp) == 0 \
                and (w.global_batch // (fx.mb * fx.dp)) % fx.pp:
            m = w.global_batch // (fx.mb * fx.dp)
            raise LlmctlError(f"the interleaved schedule (--vpp {fx.vpp}) needs the micro-batches per step, "
                              f"global_batch/(dp*micro_batch) = {w.global_batch}/({fx.dp}*{fx.mb}) = {m}, "
                              f"to be a multiple of pp = {fx.pp}",
                              hint="use --vpp 1 (1F1B takes any number of micro-batches), or change "
                                   "--global-batch or --micro-batch")
    if fx.dp and w.global_batch % fx.dp:
        raise LlmctlError(f"--dp {fx.dp} does not divide the global batch {w.global_batch}")
    if fx.mb and fx.dp and w.global_batch % (fx.mb * fx.dp):
        raise LlmctlError(f"micro_batch*dp = {fx.mb}*{fx.dp} does not divide the global batch {w.global_batch}")
    if strategy == "manual":
        missing = [n for n, v in (("--tp", fx.tp), ("--pp", fx.pp), ("--dp", fx.dp)) if not v]
        if missing and len(missing) > 1:
            raise LlmctlError(f"--strategy manual needs the layout: {', '.join(missing)} missing",
                              hint="give at least two of --tp/--pp/--dp (the third follows from the GPU count)")


def compute_plan(req: Request) -> tuple[Any, SearchOutcome]:
    """Solve (auto) or cost (manual) and return (PlanFile, SearchOutcome)."""
    from llmctl.config.plan import PlanFile
    from llmctl.plan.explain_infeasible import explain

    model, cl, w = load_inputs(req)
    fx = req.fixed or Fixed()
    if req.strategy == "manual":  # unspecified knobs take the plain defaults, not the solver's choice
        fx.cp = fx.cp or 1
        fx.vpp = fx.vpp or 1
        fx.mb = fx.mb or 1
        fx.zero = 0 if fx.zero is None else fx.zero
        fx.recompute = fx.recompute or "none"
        known = [x for x in (fx.tp, fx.pp, fx.dp) if x]
        if len(known) == 2:
            rest = cl.gpus // (fx.cp * known[0] * known[1]) if cl.gpus % (fx.cp * known[0] * known[1]) == 0 else 0
            if not fx.tp:
                fx.tp = rest or None
            elif not fx.pp:
                fx.pp = rest or None
            else:
                fx.dp = rest or None
    check_fixed(fx, cl, w, req.strategy)
    if req.dp_overlap and w.engine == "deepspeed" and (fx.pp or 1) > 1:
        raise LlmctlError(f"--dp-comm-overlap with --engine deepspeed --pp {fx.pp}: DeepSpeed's pipeline engine "
                          f"reduces gradients after the pipeline's flush (its TrainSchedule's ReduceGrads)",
                          hint="drop --dp-comm-overlap, or plan with --engine megatron")
    outcome = search(w, cl, fx, top=req.top, time_limit=req.time_limit)
    if not outcome.plans:
        explain(w, cl, fx, outcome)  # raises with the binding constraint and the smallest fix
    inputs = dict(model=req.model, hardware=req.hardware, site=req.site, model_sha256=_sha(req.model),
                  hardware_sha256=_sha(req.hardware), **({"train": req.train, "train_sha256": _sha(req.train)}
                                                        if req.train else {}), nodes=cl.nodes, gpus_per_node=cl.gpus_per_node,
                  seq_len=w.seq_len, global_batch=w.global_batch, memory_gb=cl.memory_gb, strategy=req.strategy,
                  attention=w.attention, precision=w.precision, tp_overlap=w.tp_overlap,
                  dp_overlap=dp_overlapped(w, outcome.plans[0].cfg.pp), sequence_parallel=w.sequence_parallel,
                  engine=w.engine,
                  device=cl.device)
    best, *alts = outcome.plans
    data = {
        "inputs": inputs,
        "parallelism": parallelism(best),
        "predicted": predicted(best, w, cl),
        "alternatives": [{"parallelism": parallelism(a), "predicted": predicted(a, w, cl)} for a in alts],
        "solver": {"name": outcome.solver, "status": outcome.status, "seconds": round(outcome.seconds, 4),
                   "variables": outcome.variables, "constraints": outcome.constraints},
    }
    return PlanFile.model_validate(data), outcome


def parallelism(r: Result) -> dict[str, Any]:
    c: Config = r.cfg
    return {"tp": c.tp, "pp": c.pp, "dp": c.dp, "cp": c.cp, "vpp": c.vpp, "micro_batch": c.mb,
            "grad_accum": r.m, "zero_stage": c.zero,
            # partial recomputation is written as full recomputation of the blocks that
            # recompute_layers_per_stage names (what the trainer reads), fewer than all
            "recompute": "full" if c.recompute == "partial" else c.recompute,
            "schedule": "interleaved" if c.vpp > 1 else "1f1b",
            "layers_per_stage": r.layers, "recompute_layers_per_stage": r.recomputed}


def predicted(r: Result, w: Workload, cl: Cluster) -> dict[str, Any]:
    ev = r.evaluation
    step = ev.step_time
    tokens = w.global_batch * w.seq_len
    model_flops = w.global_batch * w.shape.model_flops(w.seq_len)
    rec_layers = sum(r.recomputed)
    hw = model_flops
    per_seq_layer = w.shape.layer_flops(w.seq_len)
    if r.cfg.recompute in ("full", "partial"):
        # each recomputed block repeats its forward for every micro-batch of every pipeline
        hw += rec_layers * per_seq_layer * w.global_batch
    elif r.cfg.recompute == "selective":
        hw += w.shape.layers * w.shape.attention_core_flops(w.seq_len) * w.global_batch
    n = cl.gpus
    mem = []
    for s, m in enumerate(ev.memory):
        mem.append({"stage": s, **{k: round(m[k] / GB, 3) for k in
                                   ("weights", "gradients", "optimizer", "activations", "other", "total")}})
    return {
        "step_time_s": round(step, 6),
        "tokens_per_s": round(tokens / step, 2),
        "tflops_per_gpu": round(model_flops / step / n / 1e12, 3),
        "hw_tflops_per_gpu": round(hw / step / n / 1e12, 3),
        "mfu": round(model_flops / step / n / cl.peak_flops, 4),
        "memory_gb_per_gpu": round(max(m["total"] for m in ev.memory) / GB, 3),
        "memory_per_stage": mem,
        "time_breakdown_s": {k: round(v, 6) for k, v in ev.parts.items()},
    }
