"""Degrees master: which (tp, cp, pp, dp) tuple T, with which schedule S = (vpp,
micro_batch, recompute) and which ZeRO stage Z, ranked by a lower bound of the step time.

As an ILP the master has one-hot variables y[T,S], z[T,Z] (sum y = 1, sum_Z z[T,Z] =
sum_S y[T,S]), a continuous R[T,S] (blocks recomputed, partial recomputation only) and
g[T] (ZeRO-3's exposed gathers), with rows that each involve only the chosen T:

  memory       static_u[Z] + act_u[S] <= limit,  static_w[Z] + act_w[S] <= limit
               (two weighted averages of the per-stage memory rows: necessary for any split)
  no room      y[T,S] + z[T,Z] <= 1 where the blocks each rank can hold beside Z's model
               state do not add up to the model (exact for none/selective/full)
  partial      1 <= R <= L - 1,  R >= a_w bpp[Z] + b_w,  R >= a_u bpp[Z] + b_u
  pipeline     pipe >= pipe_avg[S] + per_rec_avg[S] R,  pipe >= pipe_int[S] + per_rec_int[S] R
  ZeRO-3       g >= gather[S] when Z = 3
  DP exposure  g >= dp_extra[S, Z] when Z <= 2 (the reduction the schedule's last backward leaves exposed)
  objective    time[Z] + pipe + g

Because exactly one (T, S, Z) is chosen and every row is local to it, the ILP's optimum
is the least, over the feasible triples, of that triple's own optimum, which has a
closed form (R at its largest lower bound, pipe at the larger of its two rows). So the
master is solved exactly by computing every triple's bound and sorting (a few
thousand triples: milliseconds, where branch and bound on the same model took
0.1-0.3 s per re-solve). llmctl.plan.search costs the triples in that order with the
stage-split ILP (solvers/stages.py) and stops when the next bound reaches the K-th
best exact time; every coefficient is a lower bound or a necessary condition over all
stage splits (llmctl.plan.bounds), so what it returns is the exact optimum.
"""

TOL = 1e-9  # relative slack on the memory rows (the exact rows are checked by the sub)


def candidates(tuples, mem_limit_gb, layers):
    """Feasible triples as (bound seconds, i, j, k), least bound first: tuples[i] with its
    schedules[j] and zeros[k]."""
    out = []
    lim = mem_limit_gb * (1 + TOL)
    for i, tb in enumerate(tuples):
        for j, sb in enumerate(tb.schedules):
            partial = sb.recompute == "partial"
            plain = max(sb.pipe_avg, sb.pipe_int)
            for k, zb in enumerate(tb.zeros):
                if zb.zero in sb.bad_zeros or zb.static_u + sb.act_u > lim or zb.static_w + sb.act_w > lim:
                    continue
                if partial:
                    bpp = zb.bytes_per_param
                    r = max(1.0, sb.rec_w[0] * bpp + sb.rec_w[1], sb.rec_u[0] * bpp + sb.rec_u[1])
                    if r > layers - 1 + 1e-9:
                        continue
                    pipe = max(sb.pipe_avg + sb.per_rec_avg * r, sb.pipe_int + sb.per_rec_int * r)
                else:
                    pipe = plain
                extra = sb.zero3_gather if zb.zero == 3 else sb.dp_extra.get(zb.zero, 0.0)  # ZeRO-3's, or DP
                out.append((zb.time + pipe + extra, i, j, k))
    out.sort()
    return out
