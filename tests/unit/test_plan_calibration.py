"""Calibration on published runs (../shared/planner/calibration.csv) and the published formulas."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from llmctl.config.model import ModelConfig
from llmctl.plan.api import predicted
from llmctl.plan.cluster import DEFAULT_SUSTAINED, Cluster, lookup_accelerator, sustained_fraction
from llmctl.plan.cost import Workload, coefficients, Config
from llmctl.plan.model_costs import LayerShape
from llmctl.plan.params import count_parameters
from llmctl.plan.search import Fixed, search
from llmctl.presets import model_fields

from conftest import SHARED

CSV = SHARED / "planner" / "calibration.csv"
ROWS = list(csv.DictReader(CSV.open())) if CSV.exists() else []


def _case(r):
    h = int(r["hidden"])
    model = ModelConfig(name=r["model"], template="gpt", layers=int(r["layers"]), hidden=h, heads=int(r["heads"]),
                        ffn=int(r["ffn"]) if r["ffn"] else 4 * h, vocab_size=int(r["vocab"]),
                        max_seq_len=int(r["seq_len"]))
    # the accelerator table's rows (llmctl.hw.accelerators) with the planner's calibrated TP bus rate
    gpu = "NVIDIA A100-SXM4-80GB" if "A100" in r["gpu_type"] else "NVIDIA H100 80GB HBM3"
    peak, mem, hbm, intra = lookup_accelerator(gpu)
    g = int(r["gpus_per_node"])
    # inter-node: Selene and the H100 systems have one 200/400 Gb/s HCA per GPU
    cl = Cluster(nodes=int(r["gpus"]) // g, gpus_per_node=g, memory_gb=mem, peak_flops=peak * 1e12,
                 sustained=sustained_fraction(gpu), hbm_bw=hbm * 1e9, intra_bw=intra * 1e9,
                 inter_bw=(25e9 if "A100" in r["gpu_type"] else 50e9))
    # Megatron 2021 materialised the attention scores; Megatron-Core 2024 runs fused attention
    attention = "eager" if "A100" in r["gpu_type"] else "flash"
    # TP communication overlap only where the source says the run had it (Megatron-Core's table);
    # Megatron-LM 2021 had no sequence parallelism, all-reduced gradients after the backward and
    # waited on each pipeline transfer (Megatron-Core overlaps them: --overlap-p2p-communication)
    mcore = "A100" not in r["gpu_type"]
    return model, cl, Workload(LayerShape.of(model), int(r["seq_len"]), int(r["global_batch"]), attention,
                               tp_overlap="--tp-comm-overlap" in r["notes"], dp_overlap=mcore,
                               sequence_parallel=mcore, p2p_overlap=None if mcore else False)


@pytest.mark.parametrize("row", ROWS, ids=[r["model"] for r in ROWS])
def test_published_layout_predicts_published_throughput(row):
    """With tp/pp/dp fixed as published, predicted TFLOP/s per GPU is within 10% of the paper's."""
    model, cl, w = _case(row)
    narayanan = "A100" in row["gpu_type"]
    fx = Fixed(tp=int(row["tp"]), pp=int(row["pp"]), dp=int(row["dp"]), cp=1,
               recompute="full" if narayanan else None, zero=0 if narayanan else None)
    out = search(w, cl, fx, top=0, time_limit=60)
    assert out.plans, "the published layout must fit"
    pr = predicted(out.plans[0], w, cl)
    # Narayanan's eq. 3 counts the recomputed forward; Megatron-Core reports model FLOPs
    got = pr["hw_tflops_per_gpu"] if narayanan else pr["tflops_per_gpu"]
    pub = float(row["achieved_tflops_per_gpu"])
    assert abs(got / pub - 1) <= 0.10, f"predicted {got:.1f} vs published {pub:.1f} TFLOP/s"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["model"])
def test_free_choice_beats_published_layout_and_keeps_tp_in_node(row):
    model, cl, w = _case(row)
    narayanan = "A100" in row["gpu_type"]
    pinned = Fixed(tp=int(row["tp"]), pp=int(row["pp"]), dp=int(row["dp"]), cp=1)
    free = search(w, cl, Fixed(), top=0, time_limit=60).plans[0]
    fixed = search(w, cl, pinned, top=0, time_limit=60).plans[0]
    assert free.evaluation.step_time <= fixed.evaluation.step_time * (1 + 1e-9)
    assert free.cfg.tp <= cl.gpus_per_node
    # pipeline only once tensor parallelism fills what it may; without sequence parallelism
    # (Megatron-LM 2021) every TP rank repeats the norms and residual adds, and pipeline
    # stages may well be cheaper than a second TP rank
    if free.cfg.pp > 1 and w.sequence_parallel:
        assert free.cfg.tp >= 2 or model.heads % 2
    del narayanan
    assert free.cfg.tp > 0


def test_narayanan_eq3_flops_match_the_per_matrix_count():
    """Model FLOPs 72BsLh^2(1 + s/6h + V/12hL) (Korthikanti 2022 sec. 6) from our per-matrix count."""
    for r in ROWS:
        model, _, w = _case(r)
        if model.ffn != 4 * model.hidden:
            continue
        s, L, h, V = w.seq_len, model.layers, model.hidden, model.vocab_size
        closed = 72 * s * L * h * h * (1 + s / (6 * h) + V / (12 * h * L))
        assert math.isclose(w.shape.model_flops(s), closed, rel_tol=1e-12)


KT = list(csv.DictReader((Path(__file__).parents[1] / "data" / "korthikanti2022.csv").open()))


def _kt_case(r):
    h = int(r["hidden"])
    model = ModelConfig(name=r["model"], template="gpt", layers=int(r["layers"]), hidden=h, heads=int(r["heads"]),
                        vocab_size=int(r["vocab"]), max_seq_len=int(r["seq_len"]))
    peak, mem, hbm, intra = lookup_accelerator("NVIDIA A100-SXM4-80GB")
    n = int(r["gpus"])
    cl = Cluster(nodes=max(1, n // 8), gpus_per_node=min(8, n), memory_gb=mem, peak_flops=peak * 1e12,
                 sustained=DEFAULT_SUSTAINED, hbm_bw=hbm * 1e9, intra_bw=intra * 1e9, inter_bw=25e9)
    # 2022: the attention scores were materialised (their sbh(34 + 5as/h))
    return model, cl, Workload(LayerShape.of(model), int(r["seq_len"]), int(r["global_batch"]), "eager")


@pytest.mark.parametrize("row", KT, ids=[r["model"] for r in KT])
def test_korthikanti_table5_mfu(row):
    """Korthikanti et al. 2022 Tables 3 and 5 (A100, 312 TFLOP/s peak, sequence parallel + selective
    recomputation): our model-FLOP count over their iteration time gives their MFU."""
    model, cl, w = _kt_case(row)
    flops = w.global_batch * w.shape.model_flops(w.seq_len)
    mfu = flops / float(row["iter_s_selective_sp"]) / int(row["gpus"]) / cl.peak_flops * 100
    # the table prints one decimal and the iteration time two digits: 0.2 points covers the rounding
    assert abs(mfu - float(row["mfu_percent"])) < 0.2, (row["model"], mfu)


@pytest.mark.parametrize("row", KT, ids=[r["model"] for r in KT])
def test_korthikanti_layout_predicts_published_throughput(row):
    """The published layout (tp 8, their pp and batch, micro-batch 1, selective recomputation)
    costed by the planner lands near the measured model TFLOP/s per GPU. The interleaving factor
    is not published; the solver picks it. Measured errors: docs/planner.md."""
    model, cl, w = _kt_case(row)
    n, pp = int(row["gpus"]), int(row["pp"])
    fx = Fixed(tp=8, pp=pp, dp=n // (8 * pp), cp=1, mb=int(row["micro_batch"]), recompute="selective", zero=0)
    out = search(w, cl, fx, top=0, time_limit=60)
    assert out.plans, "the published layout must fit in 80 GB"
    got = predicted(out.plans[0], w, cl)["tflops_per_gpu"]
    pub = float(row["mfu_percent"]) / 100 * cl.peak_flops / 1e12
    assert abs(got / pub - 1) <= 0.15, f"predicted {got:.1f} vs published {pub:.1f} TFLOP/s"


@pytest.mark.parametrize("size,published", [("7b", 6_738_415_616), ("13b", 13_015_864_320),
                                            ("70b", 68_976_648_192)])
def test_llama2_parameter_counts(size, published):
    assert count_parameters(ModelConfig(**model_fields("llama", size))).total == published


def test_narayanan_table1_parameter_counts_within_1pct():
    for r in ROWS:
        if "Narayanan" not in r["source"]:
            continue
        model, _, _ = _case(r)
        # the table prints one decimal (1.65B shows as 1.7): within 1% or within the rounding
        got, pub = count_parameters(model).total / 1e9, float(r["params_b"])
        assert abs(got / pub - 1) < 0.01 or round(got, 1) == pub, (r["model"], got)


@pytest.mark.parametrize("zero,expected_gb", [(0, 120), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_worked_example(zero, expected_gb):
    """Rajbhandari et al. 2020 Fig. 1: 7.5B parameters, 64-way data parallel, mixed-precision Adam."""
    model = ModelConfig(name="m", template="gpt", layers=1, hidden=64, heads=1, vocab_size=8)
    cl = Cluster(nodes=8, gpus_per_node=8, memory_gb=80, peak_flops=1e14, sustained=0.5, hbm_bw=1e12,
                 intra_bw=1e11, inter_bw=1e10)
    co = coefficients(Workload(LayerShape.of(model), 8, 64), cl, Config(dp=64, zero=zero))
    assert round(co.bytes_per_param * 7.5e9 / 1e9, 1) == pytest.approx(expected_gb, abs=0.06)


def test_korthikanti_activation_formula():
    """sbh(34 + 5as/h) bytes per layer for a GPT block; /t with sequence parallelism; 2sbh recomputed."""
    model = ModelConfig(name="m", template="gpt", layers=2, hidden=1024, heads=16, vocab_size=1000)
    sh = LayerShape.of(model)
    s, b, h, a = 2048, 2, 1024, 16
    assert math.isclose(sh.act_bytes(s, b, 1, 1, True), s * b * h * (34 + 5 * a * s / h))
    assert math.isclose(sh.act_bytes(s, b, 4, 1, True), s * b * h * (34 + 5 * a * s / h) / 4)
    assert math.isclose(sh.act_bytes(s, b, 4, 1, False), s * b * h * 34 / 4)
    assert math.isclose(sh.act_checkpoint_bytes(s, b, 1, 1), 2 * s * b * h)
