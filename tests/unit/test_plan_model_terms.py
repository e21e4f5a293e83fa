"""Issue 17, the check-set round: the physical terms added to the cost model.

Causal fused attention does half the core's work; memory-bound kernels (norms, residual adds,
activations, an eager softmax, the cross-entropy) cost their bytes through HBM, and without
sequence parallelism every TP rank does the hidden-width ones; gradient reduction overlaps only
the last micro-batch's backward (or nothing, as Megatron-LM 2021); a ring across nodes runs on
as many NICs as the group has members in a node.
"""

from __future__ import annotations

import math

import pytest

from llmctl.config.model import ModelConfig
from llmctl.plan import comm, cost
from llmctl.plan.cluster import Cluster, lookup_accelerator
from llmctl.plan.cost import Config, Workload, coefficients, dp_time
from llmctl.plan.model_costs import LayerShape

GPT = ModelConfig(name="g", template="gpt", layers=24, hidden=2048, heads=16, vocab_size=51200, max_seq_len=2048)


def a100s(gpus: int) -> Cluster:
    peak, mem, hbm, intra = lookup_accelerator("NVIDIA A100-SXM4-80GB")
    return Cluster(nodes=max(1, gpus // 8), gpus_per_node=min(8, gpus), memory_gb=mem, peak_flops=peak * 1e12,
                   sustained=0.8, hbm_bw=hbm * 1e9, intra_bw=intra * 1e9, inter_bw=25e9)


def test_causal_flash_attention_takes_half_the_cores_time():
    sh = LayerShape.of(GPT)
    cl = a100s(8)
    cfg = Config(tp=8)
    eager = coefficients(Workload(sh, 2048, 8, "eager"), cl, cfg).time_parts
    flash = coefficients(Workload(sh, 2048, 8, "flash"), cl, cfg).time_parts
    co = coefficients(Workload(sh, 2048, 8, "flash"), cl, cfg)
    rate = cl.peak_flops * cl.sustained * sh.hidden / (sh.hidden + cost.GEMM_HALF_WIDTH)
    core = 3 * sh.attention_core_flops(2048) / 8 / rate
    assert math.isclose(eager["compute"] - flash["compute"], core / 2, rel_tol=1e-9)
    # the eager softmax's traffic is memory-bound time the fused kernel does not have
    assert eager["memory_bound"] > flash["memory_bound"] > 0
    assert co.t_layer > 0


def test_memory_bound_bytes_follow_sequence_parallelism():
    sh = LayerShape.of(GPT)
    s, b, t, h, f = 2048, 1, 8, 2048, 4 * 2048
    sp = sh.memory_bound_bytes(s, b, t, 1, "flash", True)
    whole = sh.memory_bound_bytes(s, b, t, 1, "flash", False)
    hidden = s * b * h * (2 * 4 + 2 * 7)  # two norms (4 bytes), two bias-dropout-adds (7 bytes)
    act = s * b * f * 4 / t  # GELU reads and writes the ffn width
    assert math.isclose(sp, hidden / t + act) and math.isclose(whole, hidden + act)
    # an eager softmax + dropout over the a/t x s x s scores: 4 + 5 bytes per score
    assert math.isclose(sh.memory_bound_bytes(s, b, t, 1, "eager", True) - sp, 16 / t * s * s * b * 9)


def test_activations_without_sequence_parallelism_are_korthikanti_eq2():
    """sbh(10 + 24/t + 5as/(ht)) bytes per layer with tensor parallelism alone; 2sbh per recomputed block."""
    sh = LayerShape.of(ModelConfig(name="m", template="gpt", layers=2, hidden=1024, heads=16, vocab_size=1000))
    s, b, h, a, t = 2048, 2, 1024, 16, 4
    assert math.isclose(sh.act_bytes(s, b, t, 1, True, "eager", False), s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
    assert math.isclose(sh.act_checkpoint_bytes(s, b, t, 1, False), 2 * s * b * h)


def test_gradient_reduction_hides_behind_the_last_backward_only():
    cl = a100s(64)
    per_full, const = dp_time(cl, 1, 1, 64, 1, 1, overlap=False)
    per_hidden, _ = dp_time(cl, 1, 1, 64, 1, 1, hide=1e9, params=1e9, overlap=True)
    assert math.isclose(per_hidden, per_full * cost.DP_EXPOSED)
    # a backward shorter than the reduction leaves the difference exposed
    c = per_full * 1e9 + const  # the reduction's seconds for 1e9 parameters
    per_short, const_short = dp_time(cl, 1, 1, 64, 1, 1, hide=c / 4, params=1e9, overlap=True)
    assert math.isclose(per_short * 1e9 + const_short, c - c / 4, rel_tol=1e-9)
    # more micro-batches per step shrink what one backward hides: the exposed share grows with m
    sh = LayerShape.of(GPT)
    few = coefficients(Workload(sh, 2048, 64), cl, Config(dp=64, zero=1, mb=1)).t_dp_per_param
    many = coefficients(Workload(sh, 2048, 64 * 16), cl, Config(dp=64, zero=1, mb=1)).t_dp_per_param
    assert few == many  # the last micro-batch's backward is the same whatever m is
    off = coefficients(Workload(sh, 2048, 64, dp_overlap=False), cl, Config(dp=64, zero=1, mb=1)).t_dp_per_param
    assert off > few


@pytest.mark.parametrize("stride,size,k", [(1, 32, 8), (2, 16, 4), (4, 8, 2), (8, 4, 1), (1, 3, 1)])
def test_a_ring_across_nodes_runs_on_the_nics_its_members_hold(stride, size, k):
    intra, inter = 1000.0, 10.0
    want = min(intra, k * inter * comm.NET_BUS_EFFICIENCY)
    assert comm.group_bw(stride, size, 8, intra, inter) == pytest.approx(want)
    # a point-to-point exchange crosses on one NIC
    assert comm.group_bw(stride, size, 8, intra, inter, collective=False) == pytest.approx(inter * comm.NET_BUS_EFFICIENCY)


def test_the_cli_records_overlap_and_sequence_parallel(tmp_path):
    import json

    from conftest import run_cli

    model = tmp_path / "m.json"
    model.write_text(json.dumps(dict(name="m", template="gpt", layers=24, hidden=2048, heads=16, vocab_size=51200,
                                     max_seq_len=2048)))
    base = ["plan", "compute", "--model", str(model), "--gpus-per-node", "8", "--nodes", "4", "--peak-tflops", "312",
            "--max-memory-gb", "80", "--tp", "2", "--pp", "1", "--json"]
    on = run_cli(*base)
    off = run_cli(*base, "--no-dp-comm-overlap", "--no-sequence-parallel")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    a, b = json.loads(on.stdout), json.loads(off.stdout)
    assert (a["inputs"]["dp_overlap"], a["inputs"]["sequence_parallel"]) == (True, True)
    assert (b["inputs"]["dp_overlap"], b["inputs"]["sequence_parallel"]) == (False, False)
    assert b["predicted"]["step_time_s"] > a["predicted"]["step_time_s"]


def test_interleaved_pipeline_transfers_hide_behind_the_chunks():
    """Megatron-Core's interleaved schedule overlaps a chunk's sends and receives with its compute
    (--overlap-p2p-communication, on by default): what the chunks cover costs DP_EXPOSED of itself.
    1F1B, Megatron-LM 2021 (p2p_overlap False) and DeepSpeed's pipeline engine wait for each."""
    sh = LayerShape.of(GPT)
    cl = a100s(64)
    cfg = Config(tp=2, pp=4, dp=8, vpp=2)
    w = Workload(sh, 2048, 256, "flash")
    blocking = coefficients(Workload(sh, 2048, 256, "flash", p2p_overlap=False), cl, cfg).time_parts["p2p"]
    overlapped = coefficients(w, cl, cfg).time_parts["p2p"]
    assert blocking > 0
    # the chunks' forward and backward (24/4 blocks per rank) far exceed two 2048 x 2048 transfers
    assert math.isclose(overlapped, cost.DP_EXPOSED * blocking, rel_tol=1e-9)
    # one chunk per rank (vpp 1): 1F1B posts no transfer ahead of its compute
    one = coefficients(w, cl, Config(tp=2, pp=4, dp=8, vpp=1)).time_parts["p2p"]
    assert math.isclose(one, blocking / 2, rel_tol=1e-9)
    # DeepSpeed blocks on each of its four transfers whatever is asked
    ds = coefficients(Workload(sh, 2048, 256, "flash", engine="deepspeed", p2p_overlap=True), cl,
                      Config(tp=2, pp=4, dp=8, vpp=1)).time_parts["p2p"]
    assert math.isclose(ds, 2 * one, rel_tol=1e-9)


def test_fp8_gemms_run_at_their_calibrated_share_of_the_fp8_peak():
    """The linear layers' GEMMs at fp8_flops x sustained x FP8_SUSTAINED (x the width factor); the
    attention core stays at the bf16 rate."""
    import dataclasses

    sh = LayerShape.of(GPT)
    cl = dataclasses.replace(a100s(8), fp8_flops=2 * a100s(8).peak_flops)
    cfg = Config(tp=1, dp=8)
    bf = coefficients(Workload(sh, 2048, 8, "flash"), cl, cfg).time_parts["compute"]
    f8 = coefficients(Workload(sh, 2048, 8, "flash", precision="fp8"), cl, cfg).time_parts["compute"]
    width = sh.hidden / (sh.hidden + cost.GEMM_HALF_WIDTH)
    lin = 3 * sh.linear_flops(2048)
    casts = 3 * sh.fp8_cast_elements(2048, 1, 1, 1) / cl.hbm_bw
    expect = bf - lin / (cl.peak_flops * cl.sustained * width) \
        + lin / (cl.fp8_flops * cl.sustained * cost.FP8_SUSTAINED * width) + casts
    assert math.isclose(f8, expect, rel_tol=1e-9)
    assert 0 < cost.FP8_SUSTAINED < 1  # calibrated below the bf16 share (docs/planner.md)


def test_explain_error_names_the_fp8_constant_where_it_matters():
    """`--explain-error`'s elasticities include FP8_SUSTAINED: about -(FP8 GEMM share of the step)
    under --precision fp8, nothing under bf16."""
    import dataclasses

    from llmctl.plan.search import Fixed, search
    from llmctl.plan.sensitivity import sensitivity

    sh = LayerShape.of(GPT)
    cl = dataclasses.replace(a100s(8), fp8_flops=2 * a100s(8).peak_flops)
    label = "FP8 GEMM share of the sustained rate"
    out = {}
    for prec in ("bf16", "fp8"):
        w = Workload(sh, 2048, 64, "flash", precision=prec)
        res = search(w, cl, Fixed(tp=1, pp=1, dp=8, cp=1), top=0, time_limit=30).plans[0]
        out[prec] = sensitivity(w, cl, res)["elasticity"][label]
    assert out["bf16"] == 0.0
    assert -1.0 < out["fp8"] < -0.2
