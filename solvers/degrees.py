"""Degrees ILP (the master): tensor, context, pipeline and data-parallel degrees,
virtual stages, micro-batch, ZeRO stage and recomputation mode.

The choices form three one-hot groups, A = (tp, cp, recompute), B = (pp, vpp,
micro_batch), C = (dp, zero). Because tp*cp*pp*dp = N, every term of the step-time
lower bound and of the memory bounds is a function of one group or of a pair
(A,B) or (A,C) (docs/planner.md, "The ILP"); a pair product x_a*x_b is the
continuous y_ab with sum_b y_ab = x_a and sum_a y_ab = x_b, which is exact for
one-hot binaries and keeps the LP relaxation tight.

Integer relations become linear in prime exponents: for each prime q,
  e_q(tp*cp) + e_q(pp) + e_q(dp) = e_q(N)          (degrees multiply to the GPUs)
  e_q(dp) + e_q(mb) + e_q(pp) <= e_q(global_batch)  (batch divides; m is a multiple of pp)

`data` (built by llmctl.plan.search) holds the domains and coefficients; the
solver loop adds a no-good cut x_a + x_b + x_c <= 2 for each layout it has costed.
"""

GB = 1e9


def build(pulp, data):
    """Return (problem, xA, xB, xC) for the master data."""
    A, B, C = data["A"], data["B"], data["C"]
    prob = pulp.LpProblem("degrees", pulp.LpMinimize)
    xa = [pulp.LpVariable(f"a{i}", cat="Binary") for i in range(len(A))]
    xb = [pulp.LpVariable(f"b{j}", cat="Binary") for j in range(len(B))]
    xc = [pulp.LpVariable(f"c{k}", cat="Binary") for k in range(len(C))]
    prob += pulp.lpSum(xa) == 1, "one_A"
    prob += pulp.lpSum(xb) == 1, "one_B"
    prob += pulp.lpSum(xc) == 1, "one_C"
    for q, eN in data["primes_gpus"].items():
        prob += (pulp.lpSum(data["eA"][i].get(q, 0) * xa[i] for i in range(len(A)))
                 + pulp.lpSum(data["eBp"][j].get(q, 0) * xb[j] for j in range(len(B)))
                 + pulp.lpSum(data["eC"][k].get(q, 0) * xc[k] for k in range(len(C))) == eN), f"gpus_{q}"
    for q, eB in data["primes_batch"].items():
        prob += (pulp.lpSum(data["eBb"][j].get(q, 0) * xb[j] for j in range(len(B)))
                 + pulp.lpSum(data["eC"][k].get(q, 0) * xc[k] for k in range(len(C))) <= eB), f"batch_{q}"
    # pair variables (only pairs that can coexist were generated)
    yab = {key: pulp.LpVariable(f"ab{key[0]}_{key[1]}", lowBound=0) for key in data["AB"]}
    groups = data["TC"]  # index of the (tp, cp) group of each A element
    xtc = [pulp.lpSum(xa[i] for i in range(len(A)) if groups[i] == g) for g in range(data["n_tc"])]
    yac = {key: pulp.LpVariable(f"ac{key[0]}_{key[1]}", lowBound=0) for key in data["AC"]}
    _assign(pulp, prob, yab, xa, xb, "ab")
    _assign(pulp, prob, yac, xtc, xc, "ac")
    ab, ac = data["AB"], data["AC"]
    # memory: static state (A,C) and activations (A,B), each a necessary condition
    prob += pulp.lpSum(ac[k]["mem"] * y for k, y in yac.items()) <= data["mem_limit"], "memory_state"
    prob += pulp.lpSum(ab[k]["mem"] * y for k, y in yab.items()) <= data["mem_limit"], "memory_activations"
    prob += (pulp.lpSum(data["costA"][i] * xa[i] for i in range(len(A)))
             + pulp.lpSum(ab[k]["time"] * y for k, y in yab.items())
             + pulp.lpSum(ac[k]["time"] * y for k, y in yac.items()))
    return prob, xa, xb, xc


def _assign(pulp, prob, pairs, left, right, tag):
    by_left, by_right = {}, {}
    for (i, j), y in pairs.items():
        by_left.setdefault(i, []).append(y)
        by_right.setdefault(j, []).append(y)
    for i, x in enumerate(left):
        prob += pulp.lpSum(by_left.get(i, [])) == x, f"{tag}_l{i}"
    for j, x in enumerate(right):
        prob += pulp.lpSum(by_right.get(j, [])) == x, f"{tag}_r{j}"
