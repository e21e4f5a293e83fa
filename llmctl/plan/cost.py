"""The cost model of one layout: per-stage coefficients, step time and memory.

Everything the solvers optimise comes from `coefficients(...)`: the stage-split
ILP (solvers/stages.py) builds its rows from them, `evaluate(...)` scores a
finished split with the same numbers, and the test oracle enumerates with them,
so the ILP and the oracle can only disagree if the solver is wrong.

Step time of a pipeline with per-micro-batch stage times tau_s (forward+backward),
m micro-batches and v virtual stages per rank (Narayanan et al. 2021 sec. 2.2,
generalised to unequal stages):
    T_pipe = (m - 1/v) * max_s tau_s + sum_s tau_s / v
which for equal stages is (m + (p-1)/v) * tau: the bubble (p-1)/(v*m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from llmctl.errors import LlmctlError
from llmctl.plan import comm
from llmctl.plan.cluster import Cluster
from llmctl.plan.model_costs import BYTES, FP8_AMAX_HISTORY, FP8_GEMMS_PER_BLOCK, LayerShape

GB = 1e9
FRAGMENTATION = 1.05  # allocator fragmentation on top of what tensors need
OVERHEAD_GB = 2.0  # CUDA context, NCCL buffers, workspace: the framework's fixed share
# Gradient reduction (ZeRO <= 2) overlapped with the backward pass (PyTorch DDP/FSDP buckets, Megatron-Core
# --overlap-grad-reduce): with gradient accumulation it can only start in the last micro-batch's backward,
# so what exceeds that backward is exposed, and what it covers still costs DP_EXPOSED of itself (calibrated).
# Without overlap (Megatron-LM 2021's local DDP, DeepSpeed's pipeline engine: after the last backward) all of it.
DP_EXPOSED = 0.095
TP_EXPOSED = 1.0  # tensor-parallel collectives without overlap sit on the critical path
# With overlap (Megatron-Core --tp-comm-overlap, Transformer Engine userbuffers: the all-gathers and
# reduce-scatters of sequence parallelism split into chunks pipelined with the GEMMs they feed), a
# collective costs TP_OVERLAP_EXPOSED of itself (the SMs and HBM its kernels take from the GEMMs,
# the first and last chunk), and all of what exceeds the linear layers' GEMM time (calibrated).
TP_OVERLAP_EXPOSED = 0.37
# ZeRO-3's parameter gathers and gradient reduce-scatters run on their own stream beside the
# compute; what compute covers still costs this fraction of itself (NCCL's SMs and HBM traffic
# slow the GEMMs beside it; calibrated on the 175B ZeRO-3 rows of Narayanan et al. 2021 Table 2)
ZERO3_OVERLAP_EXPOSED = 0.42
# FP8 GEMMs (Transformer Engine on Hopper) reach this share of the fraction of peak that bf16 GEMMs
# sustain: the FP8 peak is twice bf16's, the kernels' achieved rate less than twice (calibrated on
# the NeMo 24.07 FP8 table, docs/planner.md)
FP8_SUSTAINED = 0.87
CP_EXPOSED = 0.5  # ring attention overlaps KV exchange with the attention blocks
# none; selective (the attention core, Korthikanti et al. 2022); full (every block of every stage
# is recomputed, what Megatron's --recompute-granularity full --recompute-method uniform does);
# partial (the solver's own option: full recomputation of only some blocks per stage, at
# least one and not all of them, recompute_layers_per_stage says how many)
RECOMPUTE_MODES = ("none", "selective", "full", "partial")
GEMM_HALF_WIDTH = 803.0  # model width at which GEMMs reach half the sustained rate (calibrated)
# Memory-bound kernels (norms, residual adds, activations, an eager attention's softmax): bytes through
# HBM at this fraction of its datasheet rate (calibrated; a streaming kernel reaches 80-90% on A100/H100);
# their backward moves about 1.5x the forward's bytes (the saved input and the incoming gradient read,
# the input gradient written: a norm's 6 bytes against 4, a softmax's 6 against 4).
HBM_EFFICIENCY = 0.897
BWD_BYTES_RATIO = 1.5
# The framework that runs the layout, where it changes a mechanism (docs/planner.md, "Engines"):
# megatron: Megatron-LM / Megatron-Core (and llmctl's pipeline, torch.distributed.pipelining): 1F1B or
#   interleaved, a micro-batch's send and receive posted together (batched isend/irecv); ZeRO-3 as
#   FSDP's (Megatron-Core's FSDP, llmctl's FSDP2 with tp or pp > 1).
# deepspeed: DeepSpeed's PipelineEngine (1F1B only; each send and receive its own blocking
#   instruction, TrainSchedule) and DeepSpeed's ZeRO (gradients in reduce_bucket_size buckets;
#   ZeRO-3 gathers costed as its fit rows of 2021 show).
# fsdp: PyTorch FSDP (one flat buffer per wrapped block, its all-gathers on their own stream with
#   backward prefetch; Zhao et al. 2023): exposed = max(e comm, comm - compute) per block, e the share
#   any overlapped NCCL traffic costs the kernels beside it (DP_EXPOSED, as DDP's bucketed reduction).
ENGINES = ("megatron", "deepspeed", "fsdp")
DS_REDUCE_BUCKET = 5e8  # DeepSpeed zero_optimization.reduce_bucket_size default (elements)
MCORE_BUCKET = 4e7  # Megatron-Core DDP bucket: max(40M, 1M x dp) parameters (--overlap-grad-reduce)


@dataclass(frozen=True)
class Config:
    """The degrees of a layout (everything but the per-stage split)."""

    tp: int = 1
    cp: int = 1
    pp: int = 1
    dp: int = 1
    vpp: int = 1
    mb: int = 1
    zero: int = 0
    recompute: str = "none"


@dataclass(frozen=True)
class Workload:
    shape: LayerShape
    seq_len: int
    global_batch: int
    attention: str = "flash"  # the attention kernel: "flash" (fused, SDPA) or "eager" (materialised scores)
    precision: str = "bf16"  # "fp8": the linear layers' GEMMs in FP8 through Transformer Engine
    tp_overlap: bool = False  # TP collectives overlapped with the GEMMs (Megatron-Core --tp-comm-overlap); off
    # by default, as in Megatron-LM and in llmctl's trainer
    dp_overlap: Optional[bool] = None  # gradient reduction overlapped with the backward (DDP/FSDP, as llmctl's
    # trainer); False: reduced after it (Megatron-LM 2021's local DDP); None: the engine's default (dp_overlapped)
    sequence_parallel: bool = True  # norms, dropout and residuals split over the TP group (Megatron
    # --sequence-parallel, llmctl's trainer with tp > 1); False: whole on every TP rank (Megatron-LM 2021)
    engine: str = "megatron"  # the framework's mechanisms (ENGINES)
    p2p_overlap: Optional[bool] = None  # pipeline sends/receives beside the chunks' compute; None: the
    # engine's default (p2p_overlapped)


@dataclass
class Coefficients:
    """Linear coefficients of one Config: per layer, per rank, per parameter."""

    cfg: Config
    m: int  # micro-batches per step per pipeline
    t_layer: float  # fwd+bwd seconds of one block per micro-batch
    t_recompute: float  # extra seconds per fully recomputed block per micro-batch
    t_rank_const: list[float]  # per rank: head, p2p (seconds per micro-batch)
    params_layer: float  # parameters of one block on one GPU
    params_rank_const: list[float]  # per rank: embedding / head parameters on one GPU
    bytes_per_param: float  # weights + gradients + Adam state under the ZeRO stage
    act_layer: float  # bytes one kept block stores per micro-batch
    act_ckpt: float  # bytes one recomputed block stores per micro-batch
    act_mult: list[float]  # per rank: micro-batches in flight (chunks / v)
    act_rank_const: list[float]  # per rank: logits, working layer
    t_dp_per_param: float  # exposed DP seconds per parameter on the GPU
    t_dp_const: float
    t_opt_per_param: float
    mem_limit: float  # bytes usable for tensors on one GPU (after overhead and fragmentation)
    time_parts: dict[str, float] = field(default_factory=dict)
    layer_static_bytes: float = 0.0  # bytes per block on a rank beside bytes_per_param (FP8 weight copies)
    dp_hide: float = 0.0  # seconds of backward the gradient reduction can hide behind (dp_time's `hide`)


def inflight(p: int, v: int, m: int, rank: int) -> float:
    """Micro-batches whose activations rank `rank` holds at its peak, in layer-sets of its stage.

    1F1B: rank s has p - s forwards in flight. Interleaved (Megatron's warm-up count):
    2(p-s-1) + (v-1)p + 1 chunks of 1/v of its layers each.
    """
    if v == 1:
        return float(min(p - rank, m))
    chunks = min(2 * (p - rank - 1) + (v - 1) * p + 1, m * v)
    return chunks / v


def coefficients(w: Workload, cl: Cluster, cfg: Config) -> Coefficients:
    """The linear cost coefficients of `cfg` on `cl` for workload `w`."""
    sh, s, b = w.shape, w.seq_len, cfg.mb
    t, c, p, d, v = cfg.tp, cfg.cp, cfg.pp, cfg.dp, cfg.vpp
    m = w.global_batch // (d * b)
    # GEMMs whose inner dimension is the model width run below the large-GEMM rate
    # when that width is small: a saturating curve fitted to the calibration runs
    rate = cl.peak_flops * cl.sustained * sh.hidden / (sh.hidden + GEMM_HALF_WIDTH)
    g, lat = cl.gpus_per_node, cl.latency_s
    # compute: forward 1x, backward 2x; selective recomputation redoes the attention core.
    # A fused causal kernel skips the score tiles above the diagonal (FlashAttention-2, Dao 2023
    # sec. 3.1.1), so it does half the core's work; an eager softmax(QK^T) computes the whole square.
    # The FLOPs a run is credited with (model_flops, MFU) still count the square, as Megatron does.
    f_core = sh.attention_core_flops(s) * b / (t * c)
    core_work = 0.5 if w.attention == "flash" else 1.0
    f_layer = sh.layer_flops(s) * b / (t * c) - (1 - core_work) * f_core
    compute = 3 * f_layer / rate
    fp8 = w.precision == "fp8"
    static_layer = 0.0
    gemm_fwd = sh.linear_flops(s) * b / (t * c) / rate  # forward time of the linear layers' GEMMs
    if fp8:
        # Transformer Engine runs the linear layers' GEMMs in FP8 (forward, data and weight
        # gradients); attention core and head stay bf16. Casting each GEMM input (forward) and
        # output gradient (backward) reads 2 bytes and writes 1 per element: memory-bound.
        if not cl.fp8_flops:
            raise LlmctlError(f"{cl.gpu_name} has no FP8 tensor rate in llmctl's accelerator table",
                              hint="FP8 training needs Hopper, Ada or Blackwell GPUs; plan with --precision bf16")
        rate8 = cl.fp8_flops * cl.sustained * FP8_SUSTAINED * sh.hidden / (sh.hidden + GEMM_HALF_WIDTH)
        f_lin = sh.linear_flops(s) * b / (t * c)
        compute = 3 * (f_lin / rate8 + (f_layer - f_lin) / rate)
        compute += 3 * sh.fp8_cast_elements(s, b, t, c) / cl.hbm_bw
        gemm_fwd = f_lin / rate8
        # an FP8 copy of each linear weight and its transpose (Hopper's FP8 GEMMs take one
        # layout), and the scaling state of every FP8 tensor
        static_layer = 2 * sh.linear_params() / t + FP8_GEMMS_PER_BLOCK * 3 * (FP8_AMAX_HISTORY + 2) * 4
    # memory-bound kernels beside the GEMMs (`memory_bound_bytes`); an eager softmax's share is
    # recomputed with the core under selective recomputation
    hbm = cl.hbm_bw * HBM_EFFICIENCY
    mem_fwd = sh.memory_bound_bytes(s, b, t, c, w.attention, w.sequence_parallel) / hbm
    mem_score = (mem_fwd - sh.memory_bound_bytes(s, b, t, c, "flash", w.sequence_parallel) / hbm)
    if cfg.recompute == "selective":
        sel = core_work * f_core / rate + mem_score
    else:
        sel = 0.0
    # tensor (+sequence) parallel: 2 all-gathers + 2 reduce-scatters forward, same backward
    act_msg = BYTES * s / c * b * sh.hidden
    bw_tp = comm.group_bw(1, t, g, cl.intra_bw, cl.inter_bw)
    tp_fwd = 4 * comm.all_gather(act_msg, t, bw_tp, lat)
    if w.tp_overlap:  # pipelined with the GEMMs: a share of itself, and what the GEMMs cannot cover
        tp_fwd = max(TP_OVERLAP_EXPOSED * tp_fwd, tp_fwd - gemm_fwd)
    else:
        tp_fwd *= TP_EXPOSED
    # context parallel: ring exchange of this rank's K and V chunk, c-1 steps, 3x for fwd+bwd
    kv_chunk = 2 * BYTES * s / c * b * sh.kv_heads * sh.head_dim / t
    bw_cp = comm.group_bw(t, c, g, cl.intra_bw, cl.inter_bw, collective=False)
    cp_time = 3 * (c - 1) * comm.p2p(kv_chunk, bw_cp, lat) * CP_EXPOSED if c > 1 else 0.0
    fwd = compute / 3 + mem_fwd
    memory_bound = (1 + BWD_BYTES_RATIO) * mem_fwd
    compute += sel
    t_layer = compute + memory_bound + 2 * tp_fwd + cp_time
    # one more forward (and its TP collectives) per recomputed block: in every block under
    # "full", in the blocks the split chooses under "partial"
    t_rec_block = fwd + tp_fwd
    rec_layer = t_rec_block if cfg.recompute == "full" else 0.0
    t_layer += rec_layer
    t_recompute = t_rec_block if cfg.recompute == "partial" else 0.0
    # pipeline: each rank sends an activation forward and a gradient backward per chunk (1/t of it:
    # Megatron's scatter/gather, DeepSpeed's partitioned pipe buffers). Megatron posts a micro-batch's
    # send and receive together, so two transfers per micro-batch lie on the critical path; DeepSpeed's
    # TrainSchedule issues each send and receive as its own blocking instruction, one after the
    # other, so four do (a discrete-event simulation of both schedules gives (m+p-1)·2c resp. ·4c)
    bw_pp = comm.group_bw(t * c * d, p, g, cl.intra_bw, cl.inter_bw, collective=False)
    xfers = 4 if w.engine == "deepspeed" else 2
    p2p = xfers * v * comm.p2p(act_msg / t, bw_pp, lat) if p > 1 else 0.0
    if p > 1 and p2p_overlapped(w, v):
        # Megatron-Core's interleaved schedule posts a chunk's transfers before it computes the
        # chunk beside them (--overlap-p2p-communication): a micro-batch's transfers on a rank hide
        # behind its v chunks' forward and backward, and what they cover still costs DP_EXPOSED of
        # itself, as any NCCL traffic beside the kernels does
        p2p = max(DP_EXPOSED * p2p, p2p - 3 * fwd * sh.layers / p)
    head = 3 * sh.head_flops(s) * b / (t * c) / rate + sh.logits_memory_bytes(s, b, t, c) / hbm
    t_rank = [p2p] * p
    t_rank[-1] += head
    z3_layer, z3_rank = zero3_exposed(w, cl, cfg, fwd, head / 3)
    t_layer += z3_layer
    t_rank = [x + y for x, y in zip(t_rank, z3_rank)]
    # parameters per GPU; Megatron keeps a tied embedding's copy on the last stage
    pr = [0.0] * p
    if p == 1:
        pr[0] = (sh.params_total - sh.layers * sh.params_layer) / t
    else:
        pr[0] += sh.params_first / t
        pr[-1] += sh.params_last / t
    z = cfg.zero
    bpp = 2 / (d if z >= 3 else 1) + 2 / (d if z >= 2 else 1) + 12 / (d if z >= 1 else 1)
    # activations
    # selective drops the attention core's s^2 tensors; under full recomputation the blocks
    # that are not recomputed are ordinary blocks and keep them (docs/planner.md)
    keep_core = cfg.recompute != "selective"
    sp = w.sequence_parallel
    a_layer = sh.act_bytes(s, b, t, c, keep_core, w.attention, sp)
    if fp8:
        a_layer -= sh.fp8_saved_bytes(s, b, t, c)
    a_ckpt = sh.act_checkpoint_bytes(s, b, t, c, sp) if cfg.recompute in ("full", "partial") else a_layer
    if cfg.recompute == "full":  # every block keeps only its input
        a_layer = a_ckpt
    mult = [inflight(p, v, m, r) for r in range(p)]
    a_rank = [0.0] * p
    a_rank[-1] += sh.logits_bytes(s, b, t, c)
    if cfg.recompute in ("full", "partial"):  # the block being recomputed holds its full activations
        whole = sh.act_bytes(s, b, t, c, True, w.attention, sp)
        a_rank = [x + whole for x in a_rank]
    # the backward of one micro-batch over a rank's share of the blocks hides the gradient reduction
    hide = (2 * fwd + (fwd if cfg.recompute == "full" else 0.0)) * sh.layers / p
    overlap = dp_overlapped(w, p)
    t_dp, t_dp_c = dp_time(cl, t, c, d, cfg.zero, m, hide=hide if overlap else 0.0,
                           params=sh.params_total / (t * p), overlap=overlap,
                           collectives=dp_collectives(w, t, p, d), gather_after=w.engine == "deepspeed")
    # Adam step is memory-bound: read/write fp32 master, m, v and the bf16 weight and gradient
    t_opt = 28.0 / (d if z >= 1 else 1) / cl.hbm_bw
    usable = max(0.0, (cl.memory_gb - OVERHEAD_GB) * GB / FRAGMENTATION)
    return Coefficients(cfg=cfg, m=m, t_layer=t_layer, t_recompute=t_recompute, t_rank_const=t_rank,
                        params_layer=sh.params_layer / t, params_rank_const=pr, bytes_per_param=bpp,
                        act_layer=a_layer, act_ckpt=a_ckpt, act_mult=mult, act_rank_const=a_rank,
                        t_dp_per_param=t_dp, t_dp_const=t_dp_c, t_opt_per_param=t_opt, mem_limit=usable,
                        time_parts={"compute": compute, "memory_bound": memory_bound, "tp_comm": 2 * tp_fwd, "cp_comm": cp_time,
                                    "recompute": rec_layer, "zero3_comm": z3_layer, "zero3_const": sum(z3_rank),
                                    "p2p": p2p, "head": head}, layer_static_bytes=static_layer,
                        dp_hide=hide if overlap else 0.0)


def p2p_overlapped(w: Workload, v: int) -> bool:
    """Whether the pipeline's transfers run beside the chunks' compute. Megatron-Core overlaps them in
    its interleaved schedule by default (--overlap-p2p-communication; Megatron-LM before 2023 waited
    for each batched send/receive); DeepSpeed's PipelineEngine blocks on each (TrainSchedule).
    Otherwise as the workload says."""
    if w.engine == "deepspeed":
        return False
    if w.p2p_overlap is not None:
        return w.p2p_overlap
    return w.engine == "megatron" and v > 1


def dp_overlapped(w: Workload, p: int) -> bool:
    """Whether the gradient reduction (ZeRO <= 2) runs beside the backward. DeepSpeed's pipeline engine
    reduces after the pipeline's flush (its TrainSchedule's ReduceGrads), whatever is asked; its ZeRO-1/2
    overlap only with zero_optimization.overlap_comm, off by default below stage 3 (DeepSpeedZeroConfig).
    Otherwise as the workload says, by default beside it (PyTorch DDP/FSDP, Megatron-Core)."""
    if w.engine == "deepspeed":
        return bool(w.dp_overlap) and p == 1
    return w.dp_overlap is not False


def dp_collectives(w: Workload, t: int, p: int, d: int) -> int:
    """Collectives one gradient reduction of a rank takes: each pays a ring's latency.

    DeepSpeed's ZeRO-1/2 reduce buckets of reduce_bucket_size elements; Megatron one contiguous
    buffer, or with the reduction overlapped Megatron-Core's buckets of max(40M, 1M x dp) parameters;
    FSDP one reduce-scatter per wrapped block and one for the root.
    """
    params = w.shape.params_total / (t * p)
    if w.engine == "fsdp":
        return -(-w.shape.layers // p) + 1
    if w.engine == "deepspeed":
        return max(1, math.ceil(params / DS_REDUCE_BUCKET))
    return max(1, math.ceil(params / max(MCORE_BUCKET, 1e6 * d))) if dp_overlapped(w, p) else 1


def dp_time(cl: Cluster, t: int, c: int, d: int, z: int, m: int, hide: float = 0.0, params: float = 0.0,
            overlap: bool = True, collectives: int = 1, gather_after: bool = False) -> tuple[float, float]:
    """Exposed data-parallel seconds per parameter on the GPU, and the latency constant.

    Gradients are all-reduced once per step (ZeRO-1/2: reduce-scatter + all-gather,
    the same volume). Overlapped, the reduction runs beside the last micro-batch's
    backward (`hide` seconds on a rank; `params` the parameters of an average rank):
    exposed = max(DP_EXPOSED * C, C - hide) of its C seconds, written as a fraction of C
    fixed per layout so the stage split stays linear. Not overlapped: all of C.
    ZeRO-3's traffic (parameter gathers and gradient reduce-scatters around every block
    of every micro-batch) is costed per block against the compute that hides it
    (`zero3_exposed`), not here. `m` is kept for the callers' signature.
    """
    del m
    if d <= 1 or z >= 3:
        return 0.0, 0.0
    bw = comm.group_bw(t * c, d, cl.gpus_per_node, cl.intra_bw, cl.inter_bw)
    per = BYTES * comm.all_reduce(1, d, bw, 0)
    const = collectives * 2 * (d - 1) * cl.latency_s
    if not overlap:
        return per, const
    # DeepSpeed's ZeRO-1/2 all-gather the updated weights in the optimizer step ("Gather the updated
    # weights from everyone", stage_1_and_2.py): that half is never beside the backward
    share = 0.5 if gather_after and z in (1, 2) else 1.0
    total = share * (per * params + const)
    frac = max(DP_EXPOSED, 1 - hide / total) if total > 0 else DP_EXPOSED
    return per * (1 - share + share * frac), const * (1 - share + share * frac)


def zero3_exposed(w: Workload, cl: Cluster, cfg: Config, fwd: float, head_fwd: float) -> tuple[float, list[float]]:
    """ZeRO-3's exposed seconds per micro-batch: per block, and per pipeline rank.

    Every micro-batch all-gathers each block's parameters before its forward and again
    before its backward, and reduce-scatters its gradients after the backward
    (Rajbhandari et al. 2020 sec. 5-7; FSDP and DeepSpeed alike). With one block of
    prefetch the gather for block i+1 runs during block i's forward, and the gather for
    block i-1 plus block i's reduce-scatter during block i's backward (2x the forward, 3x
    when the block is recomputed as well). What the compute cannot cover is exposed, and
    what it covers still costs ZERO3_OVERLAP_EXPOSED (e) of itself (NCCL's kernels take SMs
    and HBM bandwidth from the GEMMs beside them):
        per block  max(e AG, AG - F) + max(e (AG + RS), AG + RS - B)
    and each rank's first gather of a pass has nothing before it (2 AG per micro-batch).
    The embedding's gathers and reduce-scatter are exposed whole (a lookup hides nothing);
    the head's hide behind the logits' matmul like a block's. So exposure is nil while
    compute outweighs communication and grows with it once it does: a small per-GPU batch
    over many data-parallel ranks.
    """
    p, t, c, d = cfg.pp, cfg.tp, cfg.cp, cfg.dp
    if cfg.zero < 3 or d <= 1:
        return 0.0, [0.0] * p
    sh = w.shape
    ds = w.engine == "deepspeed"
    # DeepSpeed's ZeRO-3 (2021): across nodes at one NIC's rate per GPU, not the k NICs of a ring
    # through the node, and covered traffic still costs e of itself: what its fit rows show
    # (Narayanan et al. 2021 Table 2). FSDP gathers one flat buffer per block with one NCCL
    # all-gather (all_gather_into_tensor) on its own stream, prefetching the next block's (Zhao
    # et al. 2023 sec. 3.2-3.3): a ring through every NIC of the node, and what compute covers costs
    # what overlapped NCCL traffic costs elsewhere, DP_EXPOSED of itself (docs/planner.md, "Engines")
    bw = comm.group_bw(t * c, d, cl.gpus_per_node, cl.intra_bw, cl.inter_bw, collective=not ds)
    lat = cl.latency_s
    e = ZERO3_OVERLAP_EXPOSED if ds else DP_EXPOSED

    def ag(params: float) -> float:
        return comm.all_gather(BYTES * params / t, d, bw, lat)

    def exposed(params: float, f: float, b: float) -> float:
        g = ag(params)
        return max(e * g, g - f) + max(2 * e * g, 2 * g - b) if params else 0.0  # RS moves what AG moves

    bwd = (3 if cfg.recompute == "full" else 2) * fwd
    per_block = exposed(sh.params_layer, fwd, bwd)
    ranks = [2 * ag(sh.params_layer)] * p
    if p == 1:
        emb, last = sh.params_total - sh.layers * sh.params_layer - sh.params_last, sh.params_last
    else:
        emb, last = sh.params_first, sh.params_last
    ranks[0] += 3 * ag(emb)
    ranks[-1] += exposed(last, head_fwd, 2 * head_fwd)
    return per_block, ranks


def rank_of(chunk: int, p: int) -> int:
    """Virtual stage j lives on rank j mod p (Megatron's interleaved assignment)."""
    return chunk % p


@dataclass
class Evaluation:
    step_time: float
    tau: list[float]
    params: list[float]
    memory: list[dict[str, float]]  # per rank, bytes by part
    parts: dict[str, float]  # seconds by part

    @property
    def fits(self) -> bool:
        return all(r["fits"] for r in self.memory)


def evaluate(co: Coefficients, layers: list[int], recomputed: Optional[list[int]] = None) -> Evaluation:
    """Score a split: `layers[j]` blocks on virtual stage j, `recomputed[j]` of them recomputed."""
    cfg = co.cfg
    p, v = cfg.pp, cfg.vpp
    rec = recomputed or [0] * len(layers)
    n_r = [0] * p
    r_r = [0] * p
    for j, (n, r) in enumerate(zip(layers, rec)):
        n_r[rank_of(j, p)] += n
        r_r[rank_of(j, p)] += r
    tau = [n_r[s] * co.t_layer + r_r[s] * co.t_recompute + co.t_rank_const[s] for s in range(p)]
    params = [n_r[s] * co.params_layer + co.params_rank_const[s] for s in range(p)]
    pmax = max(params)
    pipe = (co.m - 1 / v) * max(tau) + sum(tau) / v
    dp = co.t_dp_per_param * pmax + co.t_dp_const
    opt = co.t_opt_per_param * pmax
    memory = []
    for s in range(p):
        static = co.bytes_per_param * params[s] + co.layer_static_bytes * n_r[s]
        act = co.act_mult[s] * ((n_r[s] - r_r[s]) * co.act_layer + r_r[s] * co.act_ckpt) + co.act_rank_const[s]
        z = cfg.zero
        d = cfg.dp
        memory.append({
            "weights": 2 * params[s] / (d if z >= 3 else 1) + co.layer_static_bytes * n_r[s],
            "gradients": 2 * params[s] / (d if z >= 2 else 1),
            "optimizer": 12 * params[s] / (d if z >= 1 else 1),
            "activations": act,
            "other": (FRAGMENTATION - 1) * (static + act) + OVERHEAD_GB * GB,
            "total": FRAGMENTATION * (static + act) + OVERHEAD_GB * GB,
            "fits": static + act <= co.mem_limit * (1 + 1e-9),
        })
    # where the time goes: each GPU's share of the work, then the bubble (incl. imbalance)
    share = co.m / p
    tl = co.time_parts
    layer_keys = ("compute", "memory_bound", "tp_comm", "cp_comm", "recompute", "zero3_comm")
    per_layer = sum(tl[k] for k in layer_keys)
    scale = co.t_layer / per_layer if per_layer else 0.0
    parts = {k: share * sum(n_r) * tl[k] * scale for k in layer_keys}
    parts["recompute"] += share * sum(r_r) * co.t_recompute
    parts["zero3_comm"] += share * tl["zero3_const"]
    parts["head"] = share * tl["head"]
    parts["p2p"] = co.m * tl["p2p"]
    parts["pipeline_bubble"] = max(0.0, pipe - sum(parts.values()))
    parts["dp_comm"] = dp
    parts["optimizer"] = opt
    return Evaluation(step_time=pipe + dp + opt, tau=tau, params=params, memory=memory, parts=parts)
