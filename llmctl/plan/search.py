"""The planner's search: a degrees ILP (master) and a stage-split ILP (sub), exact together.

The master (solvers/degrees.py) minimises a lower bound of the step time over the
degrees, under necessary memory conditions; the sub (solvers/stages.py) costs the
master's choice exactly by splitting blocks and recomputation over the stages.
Each costed layout is cut from the master, which is solved again until its bound
reaches the K-th best exact time found: then no other layout can beat those K
(a standard master/sub scheme with no-good cuts; docs/planner.md, "The ILP").
"""

from __future__ import annotations

import heapq
import importlib.util
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

from llmctl.errors import LlmctlError
from llmctl.plan.cluster import Cluster
from llmctl.plan.bounds import TupleBound, pipe_floor, tuple_bounds
from llmctl.plan.cost import RECOMPUTE_MODES, Config, Evaluation, Workload, coefficients, dp_overlapped, evaluate
from llmctl.resources import data_dir

GB = 1e9
MAX_VPP = 4
MAX_MICRO_BATCH = 16
MIN_CP_TOKENS = 4096  # below this per rank a context-parallel ring costs more than it saves


@dataclass
class Fixed:
    """Degrees the user pinned (None = the solver chooses)."""

    tp: Optional[int] = None
    cp: Optional[int] = None
    pp: Optional[int] = None
    dp: Optional[int] = None
    vpp: Optional[int] = None
    mb: Optional[int] = None
    zero: Optional[int] = None
    recompute: Optional[str] = None
    tp_across_nodes: bool = False


@dataclass
class Result:
    cfg: Config
    layers: list[int]
    recomputed: list[int]
    evaluation: Evaluation
    m: int = 1  # micro-batches per step (grad_accum)


@dataclass
class SearchOutcome:
    plans: list[Result]
    solver: str
    status: str
    seconds: float
    variables: int
    constraints: int
    iterations: int
    master_feasible: bool
    stats: dict[str, Any] = field(default_factory=dict)


def factorize(n: int) -> dict[int, int]:
    out: dict[int, int] = {}
    q = 2
    while q * q <= n:
        while n % q == 0:
            out[q] = out.get(q, 0) + 1
            n //= q
        q += 1
    if n > 1:
        out[n] = out.get(n, 0) + 1
    return out


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0] if n < 4096 else _big_divisors(n)


def _big_divisors(n: int) -> list[int]:
    ds = [1]
    for q, e in factorize(n).items():
        ds = [d * q ** k for d in ds for k in range(e + 1)]
    return sorted(ds)


def _pick(values: list[int], fixed: Optional[int]) -> list[int]:
    return [x for x in values if fixed is None or x == fixed]


def degree_tuples(w: Workload, cl: Cluster, fx: Fixed) -> tuple[list, dict[str, list]]:
    """Every (tp, cp, pp, dp) whose product is the GPU count and that the unary rules allow.

    Also returns each degree's own domain, so an empty one can be named.
    """
    sh, N, gb = w.shape, cl.gpus, w.global_batch
    divs = divisors(N)
    doms = {
        "tp": _pick([t for t in divs if sh.heads % t == 0 and sh.kv_heads % t == 0
                     and (fx.tp_across_nodes or cl.gpus_per_node % t == 0)], fx.tp),
        "cp": _pick([c for c in divs if w.seq_len % c == 0 and (c == 1 or w.seq_len // c >= MIN_CP_TOKENS)],
                    fx.cp),
        "pp": _pick([p for p in divs if p <= sh.layers], fx.pp),
        "dp": _pick([d for d in divs if gb % d == 0], fx.dp),
    }
    dps = set(doms["dp"])
    out = [(t, c, p, N // (t * c * p)) for t in doms["tp"] for c in doms["cp"] for p in doms["pp"]
           if N % (t * c * p) == 0 and N // (t * c * p) in dps]
    return out, doms


def schedules(w: Workload, fx: Fixed, p: int, d: int) -> list[tuple[int, int, str]]:
    """(vpp, micro_batch, recompute) allowed with pp = p, dp = d.

    dp * micro_batch divides the global batch. 1F1B (vpp = 1) takes any number m of
    micro-batches (with m < p the bubble is simply larger); only the interleaved
    schedule (vpp > 1) needs m to be a multiple of p (Narayanan et al. 2021 sec. 2.2;
    Megatron checks it). The free choice tries vpp up to MAX_VPP; a pinned vpp is
    honoured up to the model's depth (pp * vpp <= layers). DeepSpeed's pipeline engine has
    no interleaved schedule: vpp = 1 only.
    """
    per_dp = w.global_batch // d
    top = 1 if w.engine == "deepspeed" else fx.vpp if fx.vpp else MAX_VPP
    vs = [v for v in range(1, top + 1) if (v == 1 or p > 1) and p * v <= w.shape.layers]
    mbs = [b for b in divisors(per_dp) if b <= MAX_MICRO_BATCH or b == fx.mb]
    modes = free_recompute_modes(w) if fx.recompute is None else [fx.recompute]
    return [(v, b, r) for v in _pick(vs, fx.vpp) for b in _pick(mbs, fx.mb) if v == 1 or (per_dp // b) % p == 0
            for r in modes]


def free_recompute_modes(w: Workload) -> list[str]:
    """Recomputation modes the free choice tries. Under a fused attention kernel selective
    recomputation saves only the log-sum-exp (the scores are never stored) and costs the
    attention core again: it is tried only when pinned."""
    return [r for r in RECOMPUTE_MODES if not (r == "selective" and w.attention == "flash")]


def zero_stages(fx: Fixed, d: int, w: Optional[Workload] = None, p: int = 1) -> list[int]:
    """ZeRO stages worth considering over dp = d (pipeline depth p).

    In the cost model stage 1 moves the same bytes as stage 2 and keeps more memory,
    and stage 0 is slower (its optimizer step is not sharded) and keeps more still:
    both are dominated by stage 2 and only appear when pinned. Except under DeepSpeed with
    the reduction overlapped: its stages 1-2 all-gather the weights after the step, so stage 0
    (one all-reduce, all of it beside the backward) can be faster and is tried too.
    """
    if fx.zero is not None:
        return [fx.zero]
    if d == 1:
        return [0]
    if w is not None and w.engine == "deepspeed" and dp_overlapped(w, p):
        return [0, 2, 3]
    return [2, 3]


def master_tuples(w: Workload, cl: Cluster, fx: Fixed, tuples: list) -> tuple[list[TupleBound], float]:
    """Coefficients of every tuple, with pairs that cannot fit in memory pruned before the solve."""
    out = []
    limit = None
    for t, c, p, d in tuples:
        tb = tuple_bounds(w, cl, t, c, p, d, schedules(w, fx, p, d), zero_stages(fx, d, w, p))
        if not tb.schedules or not tb.zeros:
            continue
        if limit is None:
            limit = coefficients(w, cl, Config(tp=t, cp=c, pp=p, dp=d)).mem_limit / GB
        # a pair is dropped when even the most frugal partner breaks a necessary memory row
        su, sw = min(z.static_u for z in tb.zeros), min(z.static_w for z in tb.zeros)
        tb.schedules = [s for s in tb.schedules if s.act_u + su <= limit and s.act_w + sw <= limit]
        if not tb.schedules:
            continue
        au, aw = min(s.act_u for s in tb.schedules), min(s.act_w for s in tb.schedules)
        tb.zeros = [z for z in tb.zeros if z.static_u + au <= limit and z.static_w + aw <= limit]
        if tb.zeros:
            out.append(tb)
    return out, limit or 0.0


# --- running PuLP ---------------------------------------------------------------

_formulations: dict[str, Any] = {}


def formulation(name: str):
    """Load solvers/<name>.py (from the checkout or the installed wheel)."""
    if name not in _formulations:
        path = data_dir("solvers") / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"llmctl_solvers_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _formulations[name] = mod
    return _formulations[name]


@contextmanager
def _quiet():
    """HiGHS prints a banner on stdout once per process, below Python: silence fd 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class Solver:
    """HiGHS through PuLP, CBC when highspy is missing; statuses checked by sol_status."""

    def __init__(self, time_limit: float = 30.0):
        import pulp

        self.pulp = pulp
        self.time_limit = time_limit
        self.name = "HiGHS"
        try:
            # presolve off: on these small one-hot models HiGHS's presolve costs seconds, the B&B milliseconds
            self.solver = pulp.HiGHS(msg=False, timeLimit=time_limit, gapRel=1e-9, gapAbs=1e-12,
                                     threads=1, presolve="off")
            if not self.solver.available():
                raise RuntimeError("highspy not importable")
        except Exception:
            self.name = "CBC"
            self.solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=1e-9)

    def solve(self, prob) -> str:
        """'optimal', 'infeasible', or raise: a time-limited feasible point is not an optimum."""
        with _quiet():
            prob.solve(self.solver)
        return self._status(prob)

    def _status(self, prob) -> str:
        pulp = self.pulp
        if prob.sol_status == pulp.LpSolutionOptimal and prob.status == pulp.LpStatusOptimal:
            return "optimal"
        if prob.status == pulp.LpStatusInfeasible or prob.sol_status == pulp.LpSolutionInfeasible:
            return "infeasible"
        if prob.sol_status == pulp.LpSolutionIntegerFeasible:
            raise LlmctlError(f"{self.name} stopped at its {self.time_limit:.0f} s limit with a feasible "
                              "but unproven plan", hint="pin some degrees (--tp, --pp, ...) to shrink the search")
        raise LlmctlError(f"{self.name} ended with status {pulp.LpStatus[prob.status]!r} "
                          f"(solution status {pulp.LpSolution.get(prob.sol_status, prob.sol_status)!r})")


def spread(per_rank: list[int], v: int) -> list[int]:
    """Rank totals -> per virtual stage (stage j on rank j mod p), as evenly as possible."""
    p = len(per_rank)
    out = [0] * (p * v)
    for s, total in enumerate(per_rank):
        for k in range(v):
            out[k * p + s] = total // v + (1 if k < total % v else 0)
    return out


def solve_stages(solver: Solver, w: Workload, cl: Cluster, cfg: Config) -> Optional[Result]:
    """The exact cost of `cfg`: the stage-split ILP, or None when no split fits."""
    co = coefficients(w, cl, cfg)
    pulp = solver.pulp
    prob, n, r = formulation("stages").build(pulp, co, w.shape.layers)
    if solver.solve(prob) != "optimal":
        return None
    per_rank = [int(round(x.value())) for x in n]
    rec_rank = [int(round(x.value())) if x is not None else 0 for x in r]
    layers, rec = spread(per_rank, cfg.vpp), spread(rec_rank, cfg.vpp)
    if cfg.recompute == "full":
        rec = list(layers)
    ev = evaluate(co, layers, rec)
    return Result(cfg=cfg, layers=layers, recomputed=rec, evaluation=ev, m=co.m)


def search(w: Workload, cl: Cluster, fx: Fixed, top: int = 3, time_limit: float = 30.0,
           max_iterations: int = 500) -> SearchOutcome:
    """Best `1 + top` layouts by exact step time (fewer when fewer fit)."""
    t0 = time.perf_counter()
    solver = Solver(time_limit)
    tuples, doms = degree_tuples(w, cl, fx)
    empty = [n for n, key in (("tp/cp", "tp"), ("tp/cp", "cp"), ("pp/vpp/micro_batch", "pp"), ("dp/zero", "dp"))
             if not doms[key]]
    if empty:
        return SearchOutcome([], solver.name, "infeasible", time.perf_counter() - t0, 0, 0, 0, False,
                             {"empty": sorted(set(empty))})
    bounds, limit = master_tuples(w, cl, fx, tuples)
    stats: dict[str, Any] = {"tuples": len(tuples), "kept": len(bounds),
                             "pairs": sum(len(tb.schedules) + len(tb.zeros) for tb in bounds)}
    if not bounds:  # no tuple passes the necessary memory conditions (or none divides)
        return SearchOutcome([], solver.name, "infeasible", time.perf_counter() - t0, 0, 0, 0, False, stats)
    ranked = formulation("degrees").candidates(bounds, limit, w.shape.layers)
    nvars = stats["pairs"]
    ncons = len(ranked)
    stats["triples"] = ncons
    stats["setup_s"] = time.perf_counter() - t0
    want = 1 + top
    found: list[Result] = []
    it = 0
    status = "optimal"
    # a heap of (bound, i, j, k, refined): the ranked list is one already. Before a triple is
    # costed its bound is refined with its exact coefficients (bounds.pipe_floor: memory rank by
    # rank); if that lifts it above the next triple's, it goes back in the heap instead
    heap = [(b, i, j, k, False) for b, i, j, k in ranked]
    refined = 0
    while heap:
        bound, i, j, k, done = heap[0]
        if it >= max_iterations:
            break
        if time.perf_counter() - t0 > time_limit:
            status = "time limit"
            break
        # no layout left can beat the `want` best found: its bound is already above the last
        if len(found) >= want and bound >= found[want - 1].evaluation.step_time * (1 - 1e-9):
            break
        heapq.heappop(heap)
        tb, sb, zb = bounds[i], bounds[i].schedules[j], bounds[i].zeros[k]
        cfg = Config(tp=tb.tp, cp=tb.cp, pp=tb.pp, dp=tb.dp, vpp=sb.vpp, mb=sb.mb, zero=zb.zero,
                     recompute=sb.recompute)
        if not done:
            refined += 1
            co = coefficients(w, cl, cfg)
            # the bound's pipeline part: under ZeRO-3 with the gathers, which the exact blocks include
            rest = zb.time + (0.0 if zb.zero == 3 else sb.dp_extra.get(zb.zero, 0.0))
            better = rest + max(bound - rest, pipe_floor(co, w.shape.layers))
            if better > bound * (1 + 1e-12):
                if math.isfinite(better):
                    heapq.heappush(heap, (better, i, j, k, True))
                continue
        it += 1
        res = solve_stages(solver, w, cl, cfg)
        if res is not None:
            found.append(res)
            found.sort(key=lambda x: x.evaluation.step_time)
    stats["refined"] = refined
    stats["iterations"] = it
    return SearchOutcome(found[:want], solver.name, status if found else "infeasible",
                         time.perf_counter() - t0, nvars, ncons, it, bool(ranked), stats)
