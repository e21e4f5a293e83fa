"""Stage-split ILP: how many blocks, and how many recomputed blocks, each pipeline rank holds.

Given one layout's linear coefficients (llmctl.plan.cost.Coefficients), choose
integers n_s (blocks on rank s, at least v: one per virtual stage) and r_s (of
them recomputed, under partial recomputation) to minimise the step time

    (m - 1/v) * tau_max + sum_s tau_s / v + (t_dp + t_opt) * P_max + t_dp_const
    tau_s = n_s * t_layer + r_s * t_recompute + t_const_s
    P_s   = n_s * params_layer + params_const_s

subject to sum_s n_s = L, r_s <= n_s, tau_s <= tau_max, P_s <= P_max and, per rank,
    bytes_per_param * P_s + mult_s * ((n_s - r_s) a + r_s a_ckpt) + a_const_s <= limit.

Only a rank's totals enter the cost, so the v virtual stages of a rank share its
blocks as evenly as possible afterwards (llmctl.plan.search.spread); modelling
each virtual stage separately would only add symmetric copies of one optimum.
Memory rows are in GB so the coefficients stay near 1.
"""

GB = 1e9


def build(pulp, co, layers_total):
    """Return (problem, n vars, r vars) for the Coefficients `co`: one n and r per rank.

    Partial recomputation recomputes at least one block and leaves at least one alone:
    with none it is the plain layout plus a working block of memory, with all of them it
    is "full" (whose coefficients already recompute every block, so it needs no r).
    """
    cfg = co.cfg
    p, v = cfg.pp, cfg.vpp
    prob = pulp.LpProblem("stages", pulp.LpMinimize)
    n = [prob.add_variable(f"n{s}", lowBound=v, upBound=layers_total, cat="Integer") for s in range(p)]
    partial = cfg.recompute == "partial"
    r = [prob.add_variable(f"r{s}", lowBound=0, upBound=layers_total, cat="Integer") if partial else None
         for s in range(p)]
    tau_max = prob.add_variable("tau_max", lowBound=0)
    p_max = prob.add_variable("p_max", lowBound=0)
    prob += pulp.lpSum(n) == layers_total, "layers"
    if partial:
        prob += pulp.lpSum(r) >= 1, "recompute_some"
        prob += pulp.lpSum(r) <= layers_total - 1, "recompute_not_all"
    taus = []
    for s in range(p):
        tau = co.t_layer * n[s] + co.t_rank_const[s]
        params = co.params_layer / GB * n[s] + co.params_rank_const[s] / GB
        act = (co.act_mult[s] * co.act_layer + co.layer_static_bytes) / GB * n[s]
        if partial:
            tau += co.t_recompute * r[s]
            act += co.act_mult[s] * (co.act_ckpt - co.act_layer) / GB * r[s]
            prob += r[s] <= n[s], f"rec_le_layers_{s}"
        prob += tau <= tau_max, f"tau_{s}"
        prob += params <= p_max, f"params_{s}"
        prob += (co.bytes_per_param * params + act + co.act_rank_const[s] / GB
                 <= co.mem_limit / GB), f"memory_{s}"
        taus.append(tau)
    # in units of about a thousandth of the step: HiGHS prunes with absolute tolerances
    # (~1e-6), which in seconds would let it stop short of splits that differ by microseconds
    scale = 1e3 / max(co.m * layers_total * co.t_layer, 1e-12)
    prob += scale * ((co.m - 1.0 / v) * tau_max + pulp.lpSum(taus) * (1.0 / v)
                     + (co.t_dp_per_param + co.t_opt_per_param) * GB * p_max + co.t_dp_const)
    return prob, n, r
