"""The master ILP's coefficients: lower bounds of the step time and necessary memory conditions.

A full layout is a *tuple* T = (tp, cp, pp, dp) (degrees that multiply to the GPU
count), a *schedule* S = (vpp, micro_batch, recompute) and a ZeRO stage Z. The exact
cost of a layout needs the stage split (solvers/stages.py); the master only needs,
for every pair (T, S) and (T, Z), numbers that bound every split from below:

- pipeline time, two valid bounds (llmctl.plan.cost's T_pipe with tau_max bounded
  by the average stage, resp. by the best integer split of blocks and the head);
- data-parallel and optimizer time with the parameters of the fullest stage bounded
  by the average and by the embedding/head stages; ZeRO-3's per-block exposed
  gathers (they lengthen every block by what its compute cannot hide) are the one
  term that couples Z with S: the pipeline bounds recomputed with them;
- memory: any split must satisfy every weighted average of its per-stage memory
  rows; two weightings (uniform, and 1/in-flight micro-batches, which makes the
  activation term independent of the split) give necessary conditions whose
  static and activation parts are separable in Z and S;
- partial recomputation: the same weighted rows bound the number R of recomputed
  blocks from below, and R's time enters the pipeline bounds. ("full" recomputes
  every block, so it is a schedule like "none": its block time and bytes are fixed.)

All from `llmctl.plan.cost.coefficients`, so the bounds cannot drift from the
model the sub-problem and the test oracle use (docs/planner.md, "The ILP").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmctl.plan.cluster import Cluster
from llmctl.plan.cost import Config, Workload, coefficients, dp_collectives, dp_overlapped, dp_time

GB = 1e9


@dataclass
class ScheduleBound:
    """Coefficients of one (T, S) pair."""

    vpp: int
    mb: int
    recompute: str
    pipe_avg: float  # seconds, bound 1 (no recomputation counted)
    pipe_int: float  # seconds, bound 2
    per_rec_avg: float  # seconds per recomputed block in bound 1
    per_rec_int: float  # seconds per recomputed block in bound 2
    act_u: float  # GB, activation part of the uniform-weight memory row
    act_w: float  # GB, activation part of the 1/in-flight-weight memory row
    static_w_factor: float  # per-GPU parameters weighted as in the 1/in-flight row
    zero3_gather: float  # seconds ZeRO-3's exposed gathers add to the pipeline bound (0 unless dp > 1)
    rec_w: tuple[float, float] = (0.0, 0.0)  # R >= a * bytes_per_param + b (full recomputation)
    rec_u: tuple[float, float] = (0.0, 0.0)
    bad_zeros: tuple[int, ...] = ()  # ZeRO stages with which no split fits (per-rank block capacity)
    dp_hide: float = 0.0  # seconds of backward the reduction hides behind (cost.Coefficients.dp_hide)
    dp_extra: dict = field(default_factory=dict)  # ZeRO stage <= 2 -> seconds this schedule's DP
    # exposure adds to the (T, Z) bound's


@dataclass
class ZeroBound:
    """Coefficients of one (T, Z) pair."""

    zero: int
    bytes_per_param: float
    time: float  # seconds: DP reduction (without ZeRO-3 gathers) + optimizer, at the P_max bound
    static_u: float  # GB
    static_w: float  # GB


@dataclass
class TupleBound:
    tp: int
    cp: int
    pp: int
    dp: int
    schedules: list[ScheduleBound] = field(default_factory=list)
    zeros: list[ZeroBound] = field(default_factory=list)


def integer_tau_bound(layers: int, p: int, v: int, t_layer: float, p2p: float, head: float) -> float:
    """min over integer splits (n_s >= v, sum = layers) of max_s tau_s, recomputation left out.

    Every rank pays p2p; the last one also the head. The others share the rest as
    evenly as possible, so only the last rank's count n matters: the first term
    below falls and the second rises with n, and the minimum sits where they cross.
    """
    if p == 1:
        return layers * t_layer + p2p + head
    lo, hi = v, layers - (p - 1) * v

    def worst(n: int) -> float:
        return max(math.ceil((layers - n) / (p - 1)) * t_layer, n * t_layer + head) + p2p

    cross = (layers * t_layer - (p - 1) * head) / (p * t_layer) if t_layer > 0 else lo
    near = {lo, hi} | {min(hi, max(lo, math.floor(cross) + k)) for k in (-1, 0, 1, 2)}
    return min(worst(n) for n in near)


def tuple_bounds(w: Workload, cl: Cluster, tp: int, cp: int, pp: int, dp: int,
                 schedules: list[tuple[int, int, str]], zeros: list[int]) -> TupleBound:
    """All (T, S) and (T, Z) coefficients of one degree tuple."""
    L = w.shape.layers
    tb = TupleBound(tp, cp, pp, dp)
    for v, b, r in schedules:
        co = coefficients(w, cl, Config(tp=tp, cp=cp, pp=pp, dp=dp, vpp=v, mb=b, zero=0, recompute=r))
        m = co.m
        avg_factor = (m + (pp - 1) / v) / pp  # T_pipe >= (m - 1/v) sum/p + sum/v
        a_min0 = co.act_ckpt if r == "partial" else co.act_layer
        caps = _capacities(co, L, _bpp(max(zeros), dp), a_min0)  # the most frugal ZeRO stage
        pipe_avg, pipe_int, theta = _pipe_bounds(co, L, caps)
        infl = co.act_mult
        H = sum(1.0 / x for x in infl)
        wts = [1.0 / x / H for x in infl]
        a_keep = co.act_layer
        a_min = co.act_ckpt if r == "partial" else a_keep
        # per-block static bytes (FP8 weight copies) weighted as the rows weight them, from below
        const_w = sum(wt * c for wt, c in zip(wts, co.act_rank_const)) \
            + co.layer_static_bytes * (v + (L - pp * v) * min(wts))
        const_u = sum(co.act_rank_const) / pp + co.layer_static_bytes * L / pp
        flight_u = (v * sum(infl) + (L - pp * v) * min(infl)) / pp  # min over splits of sum infl_s n_s / p
        # sum_s w_s P_s over any split: the embedding/head stages, and every rank's >= v blocks
        pr = co.params_rank_const
        static_w_factor = sum(wt * x for wt, x in zip(wts, pr)) + co.params_layer * (v + (L - pp * v) * min(wts))
        sb = ScheduleBound(
            vpp=v, mb=b, recompute=r,
            pipe_avg=pipe_avg, pipe_int=pipe_int,
            per_rec_avg=avg_factor * co.t_recompute, per_rec_int=co.t_recompute / v,
            act_u=(a_min * flight_u + const_u) / GB, act_w=(L * a_min / H + const_w) / GB,
            static_w_factor=static_w_factor, zero3_gather=0.0, dp_hide=co.dp_hide)
        if r == "partial":
            delta = a_keep - co.act_ckpt
            lim = co.mem_limit
            # weighted row: bpp*sum w P + (L a - R delta)/H + const_w <= lim
            sb.rec_w = (H * static_w_factor / delta, (H * (const_w - lim) + L * a_keep) / delta)
            # uniform row: bpp*P_avg + (a sum infl n - delta sum infl r)/p + const_u <= lim, sum infl r <= max infl R
            p_avg = (L * co.params_layer + sum(pr)) / pp
            k = pp / (delta * max(infl))
            sb.rec_u = (k * p_avg, k * (a_keep * flight_u + const_u - lim))
        if dp > 1 and 3 in zeros:
            # ZeRO-3's exposed gathers lengthen every block and rank (cost.zero3_exposed): the
            # pipeline bounds again with those times; their increase is the pair's coefficient
            co3 = coefficients(w, cl, Config(tp=tp, cp=cp, pp=pp, dp=dp, vpp=v, mb=b, zero=3, recompute=r))
            avg3, int3, _ = _pipe_bounds(co3, L, caps)
            if r == "partial":  # the pipeline variable adds R's time to each bound separately
                sb.zero3_gather = max(0.0, min(avg3 - pipe_avg, int3 - pipe_int))
            else:
                sb.zero3_gather = max(0.0, max(avg3, int3) - max(pipe_avg, pipe_int))
        sb.bad_zeros = tuple(z for z in zeros if not _capacity_fits(co, L, _bpp(z, dp), a_min))
        if len(sb.bad_zeros) < len(zeros) and math.isfinite(theta):
            tb.schedules.append(sb)
    if not tb.schedules:
        return tb
    base = co  # parameters per stage depend on T only
    p_max = _p_max(base, L)
    p_avg = (L * base.params_layer + sum(base.params_rank_const)) / pp
    min_w = min(s.static_w_factor for s in tb.schedules)
    # the (T, Z) rows below count the least DP exposure any schedule gets (all of it hidden but
    # DP_EXPOSED): a lower bound; ZeRO-3's gathers are in zero3_gather. How much of the reduction
    # the schedule's last backward leaves exposed is fixed per (T, S, Z) (cost.dp_time), so each
    # schedule adds its excess (ZeRO <= 2)
    kw = dict(overlap=dp_overlapped(w, pp), collectives=dp_collectives(w, tp, pp, dp),
              gather_after=w.engine == "deepspeed")
    params = w.shape.params_total / (tp * pp)
    for z in zeros:
        bpp = _bpp(z, dp)
        per, const = dp_time(cl, tp, cp, dp, z, 0, hide=math.inf, params=1.0, **kw)
        if z < 3:
            for sb in tb.schedules:
                per_s, const_s = dp_time(cl, tp, cp, dp, z, 0, hide=sb.dp_hide, params=params, **kw)
                sb.dp_extra[z] = max(0.0, (per_s - per) * p_max + (const_s - const))
        t_opt = 28.0 / (dp if z >= 1 else 1) / cl.hbm_bw
        tb.zeros.append(ZeroBound(zero=z, bytes_per_param=bpp, time=(per + t_opt) * p_max + const,
                                  static_u=bpp * p_avg / GB, static_w=bpp * min_w / GB))
    return tb


def _pipe_bounds(co, layers: int, caps: list[int]) -> tuple[float, float, float]:
    """(bound 1, bound 2, tau_max bound) of T_pipe over every split, recomputation left out.

    Every rank pays the least of the per-rank constants and the last the rest of its own
    (the head); the capacity bound takes each rank's constant as it is.
    """
    cfg = co.cfg
    p, v, m = cfg.pp, cfg.vpp, co.m
    tl, tc = co.t_layer, co.t_rank_const
    base = min(tc)
    total = layers * tl + sum(tc)
    theta = integer_tau_bound(layers, p, v, tl, base, tc[-1] - base)
    theta = max(theta, capped_tau_bound(caps, layers, v, tl, tc, floor=theta))
    avg = (m + (p - 1) / v) / p * total
    return avg, (m - 1 / v) * theta + total / v, theta


def _bpp(z: int, d: int) -> float:
    """Bytes of weights, gradients and Adam state per parameter under ZeRO stage z over d ranks."""
    return 2 / (d if z >= 3 else 1) + 2 / (d if z >= 2 else 1) + 12 / (d if z >= 1 else 1)


def _capacities(co, layers: int, bpp: float, a_min: float) -> list[int]:
    """Most blocks each rank can hold beside `bpp` bytes per parameter of model state."""
    out = []
    for s in range(co.cfg.pp):
        room = co.mem_limit - co.act_rank_const[s] - bpp * co.params_rank_const[s]
        per = bpp * co.params_layer + co.layer_static_bytes + co.act_mult[s] * a_min
        out.append(min(layers, math.floor(room / per * (1 + 1e-12))) if per > 0 else layers)
    return out


def capped_tau_bound(caps: list[int], layers: int, v: int, t_layer: float, t_const: list[float],
                     floor: float = 0.0) -> float:
    """min over splits with v <= n_s <= caps[s] of max_s tau_s (inf when none): memory can force
    blocks off the ranks that hold the most micro-batches, and so an unequal split.

    `floor`, a lower bound known already: when the ranks hold every block at it, the answer is
    at most it and only max(floor, answer) is wanted, so it is returned without a search."""
    if any(c < v for c in caps) or sum(caps) < layers or t_layer <= 0:
        return math.inf if (any(c < v for c in caps) or sum(caps) < layers) else 0.0

    # ranks with the same capacity and constant count alike (all but the first and last, mostly)
    groups: dict[tuple[int, float], int] = {}
    for c, k in zip(caps, t_const):
        groups[(c, k)] = groups.get((c, k), 0) + 1

    def holds(theta: float) -> bool:
        return sum(n * min(c, math.floor((theta - k) / t_layer * (1 + 1e-12)))
                   for (c, k), n in groups.items()) >= layers

    if floor > 0 and holds(floor):
        return floor
    # the least candidate tau_max = n t_layer + k (k a rank's constant) at which the ranks can hold
    # every block: holds() rises with n, so a binary search over n for each k, then the least
    best = math.inf
    for k in set(t_const):
        lo, hi = v, layers
        if not holds(hi * t_layer + k):
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if holds(mid * t_layer + k):
                hi = mid
            else:
                lo = mid + 1
        best = min(best, lo * t_layer + k)
    return best


def _capacity_fits(co, layers: int, bpp: float, a_min: float) -> bool:
    """Necessary: the blocks each rank can hold (at a_min bytes each) add up to the model.

    Rank s fits n blocks iff bpp (n P_layer + P_s) + inflight_s n a_min + const_s <= limit;
    for "none"/"selective" a_min is the exact per-block bytes, so this is also sufficient
    for memory ("full" included); under partial recomputation a_min is a recomputed block's.
    """
    v = co.cfg.vpp
    total = 0
    for s in range(co.cfg.pp):
        room = co.mem_limit - co.act_rank_const[s] - bpp * co.params_rank_const[s]
        per = bpp * co.params_layer + co.layer_static_bytes + co.act_mult[s] * a_min
        cap = math.floor(room / per * (1 + 1e-12)) if per > 0 else layers
        if cap < v:
            return False
        total += cap
    return total >= layers


def _p_max(co, layers: int) -> float:
    """Parameters on the fullest stage, from below: the average, and the embedding/head stages."""
    p = co.cfg.pp
    pr = co.params_rank_const
    return max((layers * co.params_layer + sum(pr)) / p, co.params_layer + max(pr))



def pipe_floor(co, layers: int) -> float:
    """A lower bound of T_pipe over every split of the exact layout `co` (ZeRO stage known).

    The master's rows average memory over the ranks, so they bound loosely where memory binds
    rank by rank. Here rank s, holding n blocks, needs (partial recomputation) at least
    r >= (n m_keep - room_s) / (m_keep - m_rec) of them recomputed, so its time is at least
        tau_s(n) = n t_layer + c_s + t_rec max(0, (n m_keep - room_s) / (m_keep - m_rec)),
    and it can hold at most cap_s blocks (all recomputed, or all kept without partial
    recomputation). The least tau_max any split reaches, theta, is found by bisection on
    "every rank's most blocks within theta add up to the model" (rising in theta); the
    value returned keeps the bisection's lower end, where that fails, so it stays below.
    Used on the triples the search is about to cost (llmctl.plan.search), not for all.
    """
    cfg = co.cfg
    p, v, m = cfg.pp, cfg.vpp, co.m
    tl, tr = co.t_layer, co.t_recompute
    partial = cfg.recompute == "partial"
    if tl <= 0:
        return 0.0
    ranks = []
    for s in range(p):
        room = co.mem_limit * (1 + 1e-9) - co.bytes_per_param * co.params_rank_const[s] - co.act_rank_const[s]
        blk = co.bytes_per_param * co.params_layer + co.layer_static_bytes
        keep = blk + co.act_mult[s] * co.act_layer
        rec = blk + co.act_mult[s] * co.act_ckpt if partial else keep
        cap = min(layers, math.floor(room / rec + 1e-9)) if rec > 0 else layers
        if cap < v:
            return math.inf
        delta = keep - rec if partial else 0.0
        ranks.append((cap, co.t_rank_const[s], keep, delta, room))

    def holds(theta: float) -> bool:
        total = 0
        for cap, c, keep, delta, room in ranks:
            n = min(cap, math.floor((theta - c) / tl * (1 + 1e-12)))
            if delta > 0:
                n = min(n, math.floor((theta - c + tr * room / delta) / (tl + tr * keep / delta) * (1 + 1e-12)))
            if n < v:
                return False
            total += n
        return total >= layers

    hi = max(r[1] for r in ranks) + layers * (tl + tr) * (1 + 1e-9) + 1e-12
    if not holds(hi):
        return math.inf
    lo = 0.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if holds(mid):
            hi = mid
        else:
            lo = mid
    rec_min = 1.0 if partial else 0.0  # partial recomputes at least one block
    return (m - 1 / v) * lo + (layers * tl + sum(co.t_rank_const) + tr * rec_min) / v
