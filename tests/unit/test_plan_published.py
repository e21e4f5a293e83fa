"""Published runs, split into the fit set (what the constants were fitted on) and a check set.

fit:   ../shared/planner/calibration.csv (Narayanan et al. 2021 Table 1, Megatron-Core 2024 H100 table),
       the 175B rows of Narayanan et al. 2021 Table 2's ZeRO-3 family and the NeMo 24.07 FP8 table
       (FIT_FAMILIES; fit_row says which of the latter's rows)
check: tests/data/korthikanti2022.csv (selective + sequence parallel, and full recomputation) and
       the rest of tests/data/published_runs.csv (Narayanan et al. 2021 Table 2 PTD-P and the 530B
       ZeRO-3 rows, MT-NLG, Llama 3 405B at 8K and 131K, BLOOM 176B, MosaicML's MPT benchmarks,
       Megatron-Bridge's H100 FP8 rows).
       The rule: the fit set is fixed; every run added later is a check run. The one exception is
       the first FP8 table added (NeMo 24.07): FP8_SUSTAINED had no row to fix it, so that table
       joined the fit set when FP8 runs were first collected, and the FP8 rows found with it
       (Megatron-Bridge 25.11/26.02) are check rows.

What the software did is a column of the data, from the source (sequence_parallel, dp_overlap,
tp_overlap; blank: the planner's default), never chosen from the errors.

Each run is costed with its published layout pinned; what the source leaves blank the solver
picks. TP communication overlap is modelled only where the source says the run had it
(`tp_overlap` column; Megatron-Core's table names --tp-comm-overlap); blank means not stated,
and the planner's default (off) applies.

`python tests/unit/test_plan_published.py` prints the table docs/planner.md shows;
`python tests/unit/test_plan_published.py --refit` refits every constant of the cost model
jointly on the fit set (mean |error| subject to every fit row within 10 %) and prints them.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llmctl.config.model import ModelConfig  # noqa: E402
from llmctl.hw.accelerators import lookup  # noqa: E402
from llmctl.plan.api import predicted  # noqa: E402
from llmctl.plan import cluster as cluster_mod, comm, cost as cost_mod  # noqa: E402
from llmctl.plan.cluster import Cluster, lookup_accelerator  # noqa: E402
from llmctl.plan.cost import Workload  # noqa: E402
from llmctl.plan.model_costs import LayerShape  # noqa: E402
from llmctl.plan.search import Fixed, search  # noqa: E402

DATA = Path(__file__).parents[1] / "data"
# published families fitted on besides calibration.csv: the ZeRO-3 (DeepSpeed, no model parallelism)
# 175B rows fix what overlapped ZeRO-3 traffic costs and the network's bus efficiency; the 530B
# rows of the same family stay check rows
FIT_FAMILIES = ("GPT 175B ZeRO-3", "NeMo ")
# the NeMo 24.07 FP8 table fixes FP8_SUSTAINED (the one FP8 constant); a row whose published layout
# fits the model's memory only with recomputation the source does not state stays a check row: fitted,
# the missing memory mechanism would be absorbed into a rate constant (fit_row)
SHARED_CSV = Path(__file__).parents[3] / "shared" / "planner" / "calibration.csv"


def _cluster(gpu: str, gpus: int, net: float | None = None) -> Cluster:
    a100 = "A100" in gpu
    name = "NVIDIA A100-SXM4-80GB" if a100 else "NVIDIA H100 80GB HBM3"
    peak, mem, hbm, intra = lookup_accelerator(name)
    spec = lookup(name)
    g = min(8, gpus)
    # Selene and the H100 systems: one 200 / 400 Gb/s HCA per GPU
    return Cluster(nodes=max(1, gpus // g), gpus_per_node=g, memory_gb=mem, peak_flops=peak * 1e12,
                   sustained=cluster_mod.sustained_fraction(name), hbm_bw=hbm * 1e9, intra_bw=intra * 1e9,
                   inter_bw=net or (25e9 if a100 else 50e9),
                   fp8_flops=(spec.fp8_tflops or 0.0) * 1e12 * peak / spec.training_tflops)


def _int(x):
    return int(x) if x not in (None, "") else None


def runs() -> list[dict]:
    out = []
    if SHARED_CSV.exists():
        for r in csv.DictReader(SHARED_CSV.open()):
            h = int(r["hidden"])
            nar = "A100" in r["gpu_type"]
            out.append(dict(set="fit", source=r["source"].split(";")[0].split("(")[0].strip(), name=r["model"],
                            template="gpt", layers=int(r["layers"]), hidden=h, heads=int(r["heads"]), kv_heads=None,
                            ffn=_int(r["ffn"]) or 4 * h, vocab=int(r["vocab"]), seq=int(r["seq_len"]),
                            gpus=int(r["gpus"]), gpu=r["gpu_type"], tp=int(r["tp"]), pp=int(r["pp"]),
                            dp=int(r["dp"]), cp=1, vpp=None, mb=None, gb=int(r["global_batch"]),
                            recompute="full" if nar else None, zero=0 if nar else None,
                            attention="eager" if nar else "flash", metric="hw" if nar else "model",
                            tp_overlap="--tp-comm-overlap" in r["notes"],
                            # Megatron-LM 2021: no sequence parallelism, gradients all-reduced after the
                            # backward (local DDP); Megatron-Core 2024: both (--tp-comm-overlap needs
                            # --sequence-parallel; --overlap-grad-reduce)
                            sp=not nar, dp_overlap=not nar, net=None, engine="megatron",
                            # Megatron-LM 2021 waited on each pipeline transfer; Megatron-Core's
                            # interleaved schedule overlaps them (--overlap-p2p-communication, default)
                            p2p_overlap=None if not nar else False,
                            published=float(r["achieved_tflops_per_gpu"])))
    for r in csv.DictReader((DATA / "korthikanti2022.csv").open()):
        pub_sel = float(r["mfu_percent"]) / 100 * 312
        for mode, iter_key in (("selective", "iter_s_selective_sp"), ("full", "iter_s_full_recompute")):
            pub = pub_sel * float(r["iter_s_selective_sp"]) / float(r[iter_key])
            n, pp = int(r["gpus"]), int(r["pp"])
            out.append(dict(set="check", source="Korthikanti et al. 2022 Table 5", name=f"GPT {r['model']} {mode}",
                            template="gpt", layers=int(r["layers"]), hidden=int(r["hidden"]), heads=int(r["heads"]),
                            kv_heads=None, ffn=4 * int(r["hidden"]), vocab=int(r["vocab"]), seq=int(r["seq_len"]),
                            gpus=n, gpu="A100", tp=8, pp=pp, dp=n // (8 * pp), cp=1, vpp=None,
                            mb=int(r["micro_batch"]), gb=int(r["global_batch"]), recompute=mode, zero=0,
                            attention="eager", metric="model", tp_overlap=False, published=pub,
                            # the paper's sequence parallelism comes with selective recomputation; its
                            # full-recomputation baseline is Megatron without it (dp 1: no gradient reduction)
                            sp=mode == "selective", dp_overlap=True, net=None, engine="megatron",
                            p2p_overlap=False))  # Megatron-LM 2022: before --overlap-p2p-communication
    for r in csv.DictReader((DATA / "published_runs.csv").open()):
        heads = int(r["heads"])
        fit = any(r["model"].startswith(f) for f in FIT_FAMILIES)
        out.append(dict(set="fit" if fit else "check",
                        source=r["source"].split("(")[0].strip() + " " + r["source"].split(")")[-1].strip(),
                        name=r["model"], template="llama" if "Llama" in r["model"] else "gpt",
                        layers=int(r["layers"]), hidden=int(r["hidden"]), heads=heads, kv_heads=_int(r["kv_heads"]),
                        ffn=int(r["ffn"]), vocab=int(r["vocab"]), seq=int(r["seq_len"]), gpus=int(r["gpus"]),
                        gpu=r["gpu"], tp=int(r["tp"]), pp=int(r["pp"]), dp=int(r["dp"]), cp=int(r["cp"]),
                        vpp=_int(r["vpp"]), mb=_int(r["micro_batch"]), gb=int(r["global_batch"]),
                        recompute=r["recompute"] or None, zero=_int(r["zero"]), attention=r["attention"],
                        tp_overlap=r["tp_overlap"] == "1",
                        sp=r["sequence_parallel"] != "0",
                        dp_overlap=None if r["dp_overlap"] == "" else r["dp_overlap"] == "1",
                        net=float(r["net_gbps_per_gpu"]) * 1e9 if r["net_gbps_per_gpu"] else None,
                        engine=r["engine"],
                        p2p_overlap=None if r.get("p2p_overlap", "") == "" else r["p2p_overlap"] == "1",
                        precision=r.get("precision") or "bf16",
                        metric=r["metric"], published=float(r["published_tflops"])))
    return out


def cost(run: dict) -> tuple[float, object]:
    """Predicted TFLOP/s per GPU (in the source's accounting) and the plan."""
    kw = dict(name="m", template=run["template"], layers=run["layers"], hidden=run["hidden"], heads=run["heads"],
              ffn=run["ffn"], vocab_size=run["vocab"], max_seq_len=run["seq"])
    if run["kv_heads"]:
        kw["kv_heads"] = run["kv_heads"]
    model = ModelConfig(**kw)
    cl = _cluster(run["gpu"], run["gpus"], run["net"])
    w = Workload(LayerShape.of(model), run["seq"], run["gb"], run["attention"], tp_overlap=run["tp_overlap"],
                 dp_overlap=run["dp_overlap"], sequence_parallel=run["sp"], engine=run["engine"],
                 p2p_overlap=run.get("p2p_overlap"), precision=run.get("precision", "bf16"))
    fx = Fixed(tp=run["tp"], pp=run["pp"], dp=run["dp"], cp=run["cp"], vpp=run["vpp"], mb=run["mb"],
               zero=run["zero"], recompute=run["recompute"])
    out = search(w, cl, fx, top=0, time_limit=60)
    if not out.plans:
        return float("nan"), None
    pr = predicted(out.plans[0], w, cl)
    if run["metric"] == "hw":
        return pr["hw_tflops_per_gpu"], out.plans[0]
    if run["metric"] == "model_causal":
        # the source credits a causal attention core with half the square's FLOPs (Megatron-Bridge)
        sh, s = w.shape, run["seq"]
        full = sh.model_flops(s)
        return pr["tflops_per_gpu"] * (full - 1.5 * sh.layers * sh.attention_core_flops(s)) / full, out.plans[0]
    return pr["tflops_per_gpu"], out.plans[0]


def fit_row(run: dict) -> bool:
    """Whether a row of a fit family is fitted on: its layout must fit as published (without
    recomputation when the source leaves recomputation blank)."""
    if run["set"] != "fit" or run["recompute"] is not None or run.get("precision") != "fp8":
        return run["set"] == "fit"
    return cost(dict(run, recompute="none"))[1] is not None


RUNS = runs()
for _r in RUNS:
    _r["set"] = "fit" if fit_row(_r) else "check"


@pytest.mark.parametrize("run", RUNS, ids=[f"{r['set']}-{r['name']}" for r in RUNS])
def test_published_layout_is_costed(run):
    """Every published layout fits and is costed; the fit set within 10 %."""
    got, plan = cost(run)
    assert plan is not None, "the published layout must fit"
    if run["set"] == "fit":
        assert abs(got / run["published"] - 1) <= 0.10, (got, run["published"])


def family(run: dict) -> str:
    """The family a run is summarised under: its source (and what the source varies within it)."""
    n, src = run["name"], run["source"]
    if "Megatron-Core" in n:
        return "Megatron-Core 2024 H100 (megatron)"
    if "Megatron weak" in n:
        return "Narayanan 2021 Table 1 (megatron)"
    if "Korthikanti" in src:
        return "Korthikanti 2022 Table 5 (megatron)"
    if "PTD-P" in n:
        return "Narayanan 2021 Table 2 PTD-P (megatron)"
    if "ZeRO-3" in n:
        return f"Narayanan 2021 Table 2 ZeRO-3 {n.split()[1]} (deepspeed)"
    if n.startswith("NeMo "):
        return "NeMo 24.07 H100 FP8 (megatron)"
    if n.startswith("MB "):
        return "Megatron-Bridge 25.11/26.02 H100 FP8 (megatron)"
    if "MPT" in n:
        kind = "SHARD_GRAD_OP" if "grad-op" in n else "FULL_SHARD"
        return f"MosaicML MPT {'H100' if 'H100' in n else 'A100'} {kind} (fsdp)"
    return f"{' '.join(n.split()[:2 if n.startswith('Llama') else 1])} ({run['engine']})"


def table() -> str:
    lines = ["| set | run | source | engine | layout (tp·pp·dp, recompute) | published | predicted | error |",
             "|---|---|---|---|---|---|---|---|"]
    errs: dict[str, list[float]] = {"fit": [], "check": []}
    fams: dict[tuple[str, str], list[float]] = {}
    for r in RUNS:
        got, plan = cost(r)
        err = got / r["published"] - 1
        errs[r["set"]].append(err)
        fams.setdefault((r["set"], family(r)), []).append(err)
        lay = f"{r['tp']}·{r['pp']}·{r['dp']}, {plan.cfg.recompute if plan else '?'}"
        lines.append(f"| {r['set']} | {r['name']} | {r['source']} | {r['engine']} | {lay} | {r['published']:.1f} | "
                     f"{got:.1f} | {err:+.1%} |")
    lines += ["", "| set | family | runs | mean abs error | max abs error | signed range |", "|---|---|---|---|---|---|"]
    for (k, f), e in fams.items():
        a = [abs(x) for x in e]
        lines.append(f"| {k} | {f} | {len(e)} | {statistics.mean(a):.1%} | {max(a):.1%} | {min(e):+.1%} … {max(e):+.1%} |")
    lines.append("")
    for k, e in errs.items():
        if e:
            a = [abs(x) for x in e]
            lines.append(f"- {k} set: {len(e)} runs, mean |error| {statistics.mean(a):.1%}, max |error| {max(a):.1%}")
    return "\n".join(lines)


# every constant of the cost model the published runs inform: (module, name, dict key or None)
CONSTANTS = ((cluster_mod, "SUSTAINED_BY_GPU", "A100"), (cluster_mod, "SUSTAINED_BY_GPU", "H100"),
             (cost_mod, "GEMM_HALF_WIDTH", None),
             (cluster_mod, "TP_BUS_EFFICIENCY", "A100"), (cost_mod, "TP_OVERLAP_EXPOSED", None),
             (cost_mod, "DP_EXPOSED", None), (cost_mod, "ZERO3_OVERLAP_EXPOSED", None),
             (comm, "NET_BUS_EFFICIENCY", None), (cost_mod, "HBM_EFFICIENCY", None),
             (cost_mod, "FP8_SUSTAINED", None))


def _get(c):
    mod, name, key = c
    return getattr(mod, name)[key] if key else getattr(mod, name)


def _set(c, value):
    mod, name, key = c
    if key:
        getattr(mod, name)[key] = value
    else:
        setattr(mod, name, value)


def fit_errors() -> list[float]:
    return [cost(r)[0] / r["published"] - 1 for r in RUNS if r["set"] == "fit"]


def refit(limit: float = 0.10, sweeps: int = 4, step0: float = 0.08) -> dict:
    """Coordinate descent over every constant at once on the fit rows: least mean |error| with
    every fit row within `limit` (a penalty outside it). Starts from the current constants."""
    def score() -> float:
        e = [abs(x) for x in fit_errors()]
        return statistics.mean(e) + 10 * max(0.0, max(e) - limit * 0.97)

    best = score()
    for sweep in range(sweeps):
        step = step0 / (sweep + 1)
        for c in CONSTANTS:
            x0 = _get(c)
            for f in (1 - 2 * step, 1 - step, 1 + step, 1 + 2 * step):
                x = x0 * f
                if "EXPOSED" in c[1] or "EFFICIENCY" in c[1] or "SUSTAINED" in c[1]:
                    x = min(x, 1.0)
                _set(c, x)
                s = score()
                if s < best - 1e-6:
                    best, x0 = s, x
            _set(c, x0)
    return {c[1] + (f"[{c[2]}]" if c[2] else ""): _get(c) for c in CONSTANTS}


if __name__ == "__main__":
    if "--refit" in sys.argv:
        for k, v in refit().items():
            print(f"{k} = {v:.4g}")
        e = [abs(x) for x in fit_errors()]
        print(f"fit set: mean |error| {statistics.mean(e):.1%}, max {max(e):.1%}")
    else:
        print(table())
