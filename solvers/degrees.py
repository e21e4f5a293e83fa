"""Degrees ILP (the master): which (tp, cp, pp, dp) tuple, and with it which schedule
(virtual stages, micro-batch, recomputation) and ZeRO stage.

Variables (all per degree tuple T that survived the memory pruning):
  y[T,S] binary  -- T with schedule S = (vpp, micro_batch, recompute); sum over all = 1
  z[T,Z] binary  -- T with ZeRO stage Z; sum_Z z[T,Z] = sum_S y[T,S]
  R[T,S] >= 0    -- blocks recomputed in total (partial recomputation only: 1 <= R <= L - 1)
  pipe[T,S] >= 0 -- pipeline seconds of a partial-recomputation pair, above both pipeline
                    bounds with R's time (other pairs put the larger bound in the objective)
  g[T] >= 0      -- ZeRO-3 parameter gathers (the one Z x S interaction)

Memory, per (T, S): y[T,S] + z[T,Z] <= 1 where the blocks each pipeline rank can hold
beside Z's model state do not add up to the model (a necessary condition, exact for
"none"/"selective"). Divisibility (degrees multiply to the GPU count, dp*pp*micro_batch divides the
global batch, tp divides the heads, ...) is built into which pairs exist, so no
row is needed for it. Every coefficient is a lower bound of the exact cost, or a
necessary memory condition, over all stage splits (llmctl.plan.bounds), so the
optimum of this ILP bounds every layout from below; llmctl.plan.search costs the
proposals exactly and cuts them off (y[T,S] + z[T,Z] <= 1) until the bound
reaches the best exact time. Rows whose big-M is needed are exact for binaries:
  R[T,S] >= a * sum_Z bpp_Z z[T,Z] + b - M (1 - y[T,S])
  g[T]   >= sum_S gather_S y[T,S] - gmax (sum_S y[T,S] - z[T,3])
"""


def build(pulp, tuples, mem_limit_gb, layers):
    """Return (problem, y, z): y[i][j] / z[i][k] are the pair variables of tuples[i].

    A partial-recomputation schedule recomputes at least one block and leaves at least
    one alone (y <= R <= (L - 1) y): with none it is "none" with more memory, with all
    of them it is "full".
    """
    prob = pulp.LpProblem("degrees", pulp.LpMinimize)
    aff = pulp.LpAffineExpression
    y, z = [], []
    mem_u, mem_w, one, objective = [], [], [], []
    for i, tb in enumerate(tuples):
        ys = [prob.add_variable(f"y{i}_{j}", cat="Binary") for j in range(len(tb.schedules))]
        zs = [prob.add_variable(f"z{i}_{k}", cat="Binary") for k in range(len(tb.zeros))]
        y.append(ys)
        z.append(zs)
        one.extend((v, 1.0) for v in ys)
        prob += aff([(v, 1.0) for v in ys] + [(v, -1.0) for v in zs]) == 0, f"zero_of_{i}"
        bpp = [(v, zb.bytes_per_param) for v, zb in zip(zs, tb.zeros)]
        # the memory rows again per tuple (right-hand side times "T chosen"): the global rows
        # alone let the LP relaxation average a frugal tuple with a fast one
        for tag, st, ac in (("u", "static_u", "act_u"), ("w", "static_w", "act_w")):
            prob += (aff([(v, getattr(zb, st)) for v, zb in zip(zs, tb.zeros)]
                         + [(v, getattr(sb, ac) - mem_limit_gb) for v, sb in zip(ys, tb.schedules)])
                     <= 0), f"memory_{tag}_{i}"
        for v, zb in zip(zs, tb.zeros):
            objective.append((v, zb.time))
            mem_u.append((v, zb.static_u))
            mem_w.append((v, zb.static_w))
        for j, (v, sb) in enumerate(zip(ys, tb.schedules)):
            mem_u.append((v, sb.act_u))
            mem_w.append((v, sb.act_w))
            for x, zb in zip(zs, tb.zeros):  # no split of S fits beside this ZeRO stage's state
                if zb.zero in sb.bad_zeros:
                    prob += aff([(v, 1.0), (x, 1.0)]) <= 1, f"no_room_{i}_{j}_{zb.zero}"
            if sb.recompute != "partial":
                objective.append((v, max(sb.pipe_avg, sb.pipe_int)))
            else:
                r = prob.add_variable(f"R{i}_{j}", lowBound=0, upBound=layers)
                pipe = prob.add_variable(f"pipe{i}_{j}", lowBound=0)
                objective.append((pipe, 1.0))
                prob += aff([(pipe, 1.0), (v, -sb.pipe_avg), (r, -sb.per_rec_avg)]) >= 0, f"pipe_avg_{i}_{j}"
                prob += aff([(pipe, 1.0), (v, -sb.pipe_int), (r, -sb.per_rec_int)]) >= 0, f"pipe_int_{i}_{j}"
                prob += aff([(r, 1.0), (v, -float(layers - 1))]) <= 0, f"R_only_if_{i}_{j}"
                prob += aff([(r, 1.0), (v, -1.0)]) >= 0, f"R_some_{i}_{j}"
                bmax = max(b for _, b in bpp)
                for tag, (a, b) in (("w", sb.rec_w), ("u", sb.rec_u)):
                    big_m = a * bmax + b
                    if big_m > 0:  # the row can bind for some ZeRO stage
                        prob += (aff([(r, 1.0), (v, -big_m)] + [(x, -a * c) for x, c in bpp])
                                 >= b - big_m), f"R_{tag}_{i}_{j}"
        three = [v for v, zb in zip(zs, tb.zeros) if zb.zero == 3]
        gmax = max((sb.zero3_gather for sb in tb.schedules), default=0.0)
        if three and gmax > 0:
            g = prob.add_variable(f"g{i}", lowBound=0)
            objective.append((g, 1.0))
            prob += (aff([(g, 1.0), (three[0], -gmax)] + [(v, gmax - sb.zero3_gather)
                                                          for v, sb in zip(ys, tb.schedules)])
                     >= 0), f"gathers_{i}"
    prob += aff(one) == 1, "one_layout"
    prob += aff(mem_u) <= mem_limit_gb, "memory_uniform"
    prob += aff(mem_w) <= mem_limit_gb, "memory_inflight_weighted"
    # scaled so the optimum is about 1e3 (see stages.py); llmctl.plan.search divides it back
    scale = objective_scale(tuples)  # once: it scans every schedule of every tuple
    prob += aff([(v, c * scale) for v, c in objective])
    return prob, y, z


def objective_scale(tuples):
    """Factor from seconds to the master's objective units (the fastest pipeline bound ~ 1e3)."""
    least = min(max(sb.pipe_avg, sb.pipe_int) for tb in tuples for sb in tb.schedules)
    return 1e3 / max(least, 1e-12)
