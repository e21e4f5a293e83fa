"""The planner's search: a degrees ILP (master) and a stage-split ILP (sub), exact together.

The master (solvers/degrees.py) minimises a lower bound of the step time over the
degrees, under necessary memory conditions; the sub (solvers/stages.py) costs the
master's choice exactly by splitting blocks and recomputation over the stages.
Each costed layout is cut from the master, which is solved again until its bound
reaches the K-th best exact time found: then no other layout can beat those K
(a standard master/sub scheme with no-good cuts; docs/planner.md, "The ILP").
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

from llmctl.errors import LlmctlError
from llmctl.plan.cluster import Cluster
from llmctl.plan.cost import (RECOMPUTE_MODES, Config, Evaluation, Workload, coefficients, dp_time,
                              evaluate, inflight)
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


def domains(w: Workload, cl: Cluster, fx: Fixed) -> tuple[list, list, list]:
    """The one-hot groups A=(tp,cp,recompute), B=(pp,vpp,mb), C=(dp,zero), after the unary rules."""
    sh, N, gb = w.shape, cl.gpus, w.global_batch
    tps = [t for t in divisors(N) if sh.heads % t == 0 and sh.kv_heads % t == 0
           and (fx.tp_across_nodes or t <= cl.gpus_per_node)]
    cps = [c for c in divisors(N) if w.seq_len % c == 0 and (c == 1 or w.seq_len // c >= MIN_CP_TOKENS)]
    modes = [r for r in RECOMPUTE_MODES if fx.recompute in (None, r)]
    A = [(t, c, r) for t in _pick(tps, fx.tp) for c in _pick(cps, fx.cp) for r in modes if N % (t * c) == 0]
    pps = [p for p in divisors(N) if p <= sh.layers and gb % p == 0]
    mbs = [b for b in divisors(gb) if b <= MAX_MICRO_BATCH or b == fx.mb]
    B = []
    for p in _pick(pps, fx.pp):
        for v in _pick(list(range(1, MAX_VPP + 1)) if fx.vpp is None else [fx.vpp], fx.vpp):
            if (v > 1 and p == 1) or p * v > sh.layers:
                continue
            B.extend((p, v, b) for b in _pick(mbs, fx.mb))
    dps = [d for d in divisors(N) if gb % d == 0]
    C = [(d, z) for d in _pick(dps, fx.dp) for z in range(4)
         if fx.zero in (None, z) and (d > 1 or z == 0 or fx.zero == z)]
    return A, B, C


def master_data(w: Workload, cl: Cluster, A, B, C) -> dict[str, Any]:
    """Domains, exponents and the lower-bound / necessary-memory coefficients of the master."""
    sh, N, gb, L = w.shape, cl.gpus, w.global_batch, w.shape.layers
    tcs = sorted({(t, c) for t, c, _ in A})
    tc_index = {tc: i for i, tc in enumerate(tcs)}
    per_seq: dict[tuple, float] = {}
    act_one: dict[tuple, float] = {}
    limit = None
    for i, (t, c, r) in enumerate(A):
        one = coefficients(w, cl, Config(tp=t, cp=c, mb=1, recompute=r))
        two = coefficients(w, cl, Config(tp=t, cp=c, mb=2, recompute=r))
        # the part of a micro-batch's work that grows with its size: latency terms dropped
        per_seq[i] = L * (two.t_layer - one.t_layer) + (two.t_rank_const[-1] - one.t_rank_const[-1])
        act_one[i] = one.act_ckpt if r == "full" else one.act_layer
        limit = one.mem_limit
    costA = [gb * t * c / N * per_seq[i] for i, (t, c, _) in enumerate(A)]
    AB = {}
    for i, (t, c, r) in enumerate(A):
        for j, (p, v, b) in enumerate(B):
            if N % (t * c * p):
                continue
            harmonic = sum(1.0 / inflight(p, v, p, s) for s in range(p))
            AB[(i, j)] = {"time": (p - 1) / (v * p) * b * per_seq[i],
                          "mem": L * b * act_one[i] / harmonic / GB}
    AC = {}
    params_all = sh.layers * sh.params_layer + sh.params_first + sh.params_last
    for g, (t, c) in enumerate(tcs):
        for k, (d, z) in enumerate(C):
            if N % (t * c * d):
                continue
            p = N // (t * c * d)
            params_avg = (params_all if p > 1 else sh.params_total) / (t * p)
            per, const = dp_time(cl, t, c, d, z, p)  # m >= p, so p gathers bound ZeRO-3's from below
            rep = coefficients(w, cl, Config(tp=t, cp=c, pp=p, dp=d, zero=z, mb=1))
            p2p = 0.0
            if p > 1:
                rep2 = coefficients(w, cl, Config(tp=t, cp=c, pp=p, dp=d, zero=z, mb=2))
                p2p = gb / d * (rep2.t_rank_const[0] - rep.t_rank_const[0])
            AC[(g, k)] = {"time": (per + rep.t_opt_per_param) * params_avg + const + p2p,
                          "mem": rep.bytes_per_param * params_avg / GB}
    eN = factorize(N)
    eB = factorize(gb)
    return {
        "A": A, "B": B, "C": C, "TC": [tc_index[(t, c)] for t, c, _ in A], "n_tc": len(tcs),
        "eA": [factorize(t * c) for t, c, _ in A], "eBp": [factorize(p) for p, _, _ in B],
        "eBb": [_merge(factorize(p), factorize(b)) for p, _, b in B], "eC": [factorize(d) for d, _ in C],
        "primes_gpus": eN, "primes_batch": eB, "costA": costA, "AB": AB, "AC": AC,
        "mem_limit": (limit or 0.0) / GB,
    }


def _merge(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    out = dict(a)
    for q, e in b.items():
        out[q] = out.get(q, 0) + e
    return out


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

    def cut_and_resolve(self, prob, variables, name: str) -> str:
        """Add sum(variables) <= len-1 and solve again.

        With HiGHS the model PuLP built stays loaded and only the new row is passed
        (rebuilding the master for every cut would dominate the solve time).
        """
        pulp = self.pulp
        rhs = len(variables) - 1
        if self.name == "HiGHS" and getattr(prob, "solverModel", None) is not None:
            import highspy

            prob += pulp.lpSum(variables) <= rhs, name  # keep the PuLP model in step
            h = prob.solverModel
            h.addRow(-highspy.kHighsInf, rhs, len(variables), [v.index for v in variables], [1.0] * len(variables))
            prob.constraints[name].index = h.getNumRow() - 1
            with _quiet():
                h.run()
            status, sol_status = self.solver.findSolutionValues(prob)
            prob.assignStatus(status, sol_status)
            return self._status(prob)
        prob += pulp.lpSum(variables) <= rhs, name
        return self.solve(prob)

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
    ev = evaluate(co, layers, rec)
    return Result(cfg=cfg, layers=layers, recomputed=rec, evaluation=ev, m=co.m)


def search(w: Workload, cl: Cluster, fx: Fixed, top: int = 3, time_limit: float = 30.0,
           max_iterations: int = 500) -> SearchOutcome:
    """Best `1 + top` layouts by exact step time (fewer when fewer fit)."""
    t0 = time.perf_counter()
    solver = Solver(time_limit)
    pulp = solver.pulp
    A, B, C = domains(w, cl, fx)
    if not (A and B and C):
        return SearchOutcome([], solver.name, "infeasible", time.perf_counter() - t0, 0, 0, 0, False,
                             {"empty": [n for n, g in (("tp/cp", A), ("pp/vpp/micro_batch", B),
                                                       ("dp/zero", C)) if not g]})
    data = master_data(w, cl, A, B, C)
    prob, xa, xb, xc = formulation("degrees").build(pulp, data)
    nvars, ncons = len(prob.variables()), len(prob.constraints)
    want = 1 + top
    found: list[Result] = []
    it = 0
    master_feasible = False
    status = "optimal"
    cut = None
    while it < max_iterations:
        if time.perf_counter() - t0 > time_limit:
            status = "time limit"
            break
        it += 1
        st = solver.solve(prob) if cut is None else solver.cut_and_resolve(prob, cut, f"cut_{it}")
        if st != "optimal":
            break
        master_feasible = True
        bound = pulp.value(prob.objective)
        if len(found) >= want and bound >= found[want - 1].evaluation.step_time * (1 - 1e-9):
            break
        i = next(k for k, x in enumerate(xa) if x.value() > 0.5)
        j = next(k for k, x in enumerate(xb) if x.value() > 0.5)
        k = next(k for k, x in enumerate(xc) if x.value() > 0.5)
        cut = [xa[i], xb[j], xc[k]]
        (t, c, r), (p, v, b), (d, z) = A[i], B[j], C[k]
        res = solve_stages(solver, w, cl, Config(tp=t, cp=c, pp=p, dp=d, vpp=v, mb=b, zero=z, recompute=r))
        if res is not None:
            found.append(res)
            found.sort(key=lambda x: x.evaluation.step_time)
    return SearchOutcome(found[:want], solver.name, status if found else "infeasible",
                         time.perf_counter() - t0, nvars, ncons, it, master_feasible,
                         {"A": len(A), "B": len(B), "C": len(C)})
