"""Issue 17: the framework that runs a layout, where it changes the mechanism (`--engine`).

DeepSpeed's pipeline engine runs 1F1B without interleaving, each send and receive its own
blocking instruction, and reduces gradients after the flush; DeepSpeed's ZeRO-1/2 do not
overlap the reduction unless asked (overlap_comm); PyTorch FSDP gathers one flat buffer per
block on its own stream, so covered traffic costs only what overlapped NCCL traffic costs the
kernels beside it (DP_EXPOSED); every ring collective pays NCCL's
per-step latency once per bucket or unit it reduces.
"""

from __future__ import annotations

import json
import math

import pytest

from llmctl.config.model import ModelConfig
from llmctl.errors import LlmctlError
from llmctl.plan import comm, cost
from llmctl.plan.api import check_fixed
from llmctl.plan.cluster import Cluster, lookup_accelerator
from llmctl.plan.cost import Config, Workload, coefficients, dp_collectives, dp_overlapped
from llmctl.plan.model_costs import LayerShape
from llmctl.plan.search import Fixed, schedules, search

GPT175 = ModelConfig(name="gpt-175b", template="gpt", layers=96, hidden=12288, heads=96, vocab_size=51200,
                     max_seq_len=2048)
MPT70 = ModelConfig(name="mpt-70b", template="gpt", layers=80, hidden=8192, heads=64, vocab_size=50368,
                    max_seq_len=2048)


def gpus(kind: str, n: int) -> Cluster:
    name = "NVIDIA A100-SXM4-80GB" if kind == "a100" else "NVIDIA H100 80GB HBM3"
    peak, mem, hbm, intra = lookup_accelerator(name)
    return Cluster(nodes=n // 8, gpus_per_node=8, memory_gb=mem, peak_flops=peak * 1e12, sustained=0.7,
                   hbm_bw=hbm * 1e9, intra_bw=intra * 1e9, inter_bw=25e9 if kind == "a100" else 50e9)


def test_deepspeed_pipeline_puts_four_transfers_per_micro_batch_on_the_critical_path():
    """Megatron posts a micro-batch's send and receive together (2 transfers per micro-batch per
    rank); DeepSpeed's TrainSchedule issues each as its own blocking instruction (4)."""
    sh = LayerShape.of(GPT175)
    cfg = Config(tp=8, pp=12, dp=4, mb=1, recompute="full")
    mg = coefficients(Workload(sh, 2048, 1536, "eager"), gpus("a100", 384), cfg)
    ds = coefficients(Workload(sh, 2048, 1536, "eager", engine="deepspeed"), gpus("a100", 384), cfg)
    assert mg.time_parts["p2p"] > 0
    assert ds.time_parts["p2p"] == pytest.approx(2 * mg.time_parts["p2p"])
    assert ds.t_layer == pytest.approx(mg.t_layer)  # the blocks themselves are the same work


def test_deepspeed_pipeline_has_no_interleaving():
    w = Workload(LayerShape.of(GPT175), 2048, 1536, engine="deepspeed")
    assert {v for v, _, _ in schedules(w, Fixed(), 12, 4)} == {1}
    assert {v for v, _, _ in schedules(Workload(LayerShape.of(GPT175), 2048, 1536), Fixed(), 12, 4)} != {1}
    with pytest.raises(LlmctlError, match="without interleaving"):
        check_fixed(Fixed(tp=8, pp=12, dp=4, vpp=2), gpus("a100", 384), w, "manual")


def test_deepspeed_reduces_after_the_backward_unless_asked_and_its_pipeline_always_does():
    sh = LayerShape.of(GPT175)
    assert dp_overlapped(Workload(sh, 2048, 64), 1) and dp_overlapped(Workload(sh, 2048, 64), 4)
    assert not dp_overlapped(Workload(sh, 2048, 64, dp_overlap=False), 1)
    assert not dp_overlapped(Workload(sh, 2048, 64, engine="deepspeed"), 1)  # overlap_comm off below stage 3
    assert dp_overlapped(Workload(sh, 2048, 64, engine="deepspeed", dp_overlap=True), 1)  # overlap_comm: true
    assert not dp_overlapped(Workload(sh, 2048, 64, engine="deepspeed", dp_overlap=True), 4)  # after the flush


def test_fsdp_hides_what_compute_covers_where_deepspeed_zero3_does_not():
    """70B on 512 H100s, FULL_SHARD, micro-batch 8: FSDP's per-block gathers run as one ring through
    the node's NICs behind the previous block's compute, so covered traffic costs only the share any
    overlapped NCCL traffic costs (DP_EXPOSED); DeepSpeed's ZeRO-3 (its 2021 rows: one NIC's rate,
    covered traffic at ZERO3_OVERLAP_EXPOSED of itself) exposes far more in every block."""
    sh = LayerShape.of(MPT70)
    cfg = Config(dp=512, mb=8, zero=3, recompute="full")
    cl = gpus("h100", 512)
    fsdp = coefficients(Workload(sh, 2048, 4096, engine="fsdp"), cl, cfg)
    ds = coefficients(Workload(sh, 2048, 4096, engine="deepspeed"), cl, cfg)
    ring = comm.group_bw(1, 512, 8, cl.intra_bw, cl.inter_bw)  # through the node's eight NICs
    gather = comm.all_gather(2 * sh.params_layer, 512, ring, cl.latency_s)
    # forward: one gather behind the block before; backward: a gather and a reduce-scatter
    assert fsdp.time_parts["zero3_comm"] == pytest.approx(3 * cost.DP_EXPOSED * gather)
    assert ds.time_parts["zero3_comm"] > 0.1 * ds.t_layer
    assert ds.time_parts["zero3_comm"] > 5 * fsdp.time_parts["zero3_comm"]
    # with too little compute to hide behind (micro-batch 1, no recomputation) FSDP exposes the rest
    thin = coefficients(Workload(sh, 2048, 512, engine="fsdp"), cl, Config(dp=512, mb=1, zero=3))
    assert thin.time_parts["zero3_comm"] > 3 * cost.DP_EXPOSED * gather


def test_every_collective_pays_nccls_ring_latency():
    """The reduction's latency is one ring's per collective: FSDP reduce-scatters once per block (and
    the root), DeepSpeed once per reduce_bucket_size bucket, Megatron-LM one contiguous buffer."""
    sh = LayerShape.of(GPT175)
    cl = gpus("a100", 512)
    one = cost.dp_time(cl, 1, 1, 512, 2, 1, overlap=False)[1]
    assert one == pytest.approx(2 * 511 * cl.latency_s)
    assert dp_collectives(Workload(sh, 2048, 512, engine="fsdp"), 1, 1, 512) == sh.layers + 1
    assert dp_collectives(Workload(sh, 2048, 512, engine="fsdp"), 1, 4, 512) == sh.layers // 4 + 1
    assert dp_collectives(Workload(sh, 2048, 512, engine="deepspeed"), 1, 1, 512) == \
        math.ceil(sh.params_total / cost.DS_REDUCE_BUCKET)
    assert dp_collectives(Workload(sh, 2048, 512, dp_overlap=False), 1, 1, 512) == 1
    co_f = coefficients(Workload(sh, 2048, 512, engine="fsdp", dp_overlap=False), cl, Config(dp=512, zero=2))
    co_m = coefficients(Workload(sh, 2048, 512, dp_overlap=False), cl, Config(dp=512, zero=2))
    assert co_f.t_dp_const == pytest.approx((sh.layers + 1) * co_m.t_dp_const)
    assert comm.all_gather(0, 512, 1e9, cl.latency_s) == pytest.approx(511 * cl.latency_s)


def test_the_cli_takes_and_records_the_engine(tmp_path):
    from conftest import run_cli

    model = tmp_path / "m.json"
    model.write_text(json.dumps(dict(name="m", template="gpt", layers=24, hidden=2048, heads=16, vocab_size=51200,
                                     max_seq_len=2048)))
    base = ["plan", "compute", "--model", str(model), "--gpus-per-node", "8", "--nodes", "4", "--peak-tflops", "312",
            "--max-memory-gb", "80", "--json", "--top", "0"]
    ds = run_cli(*base, "--engine", "deepspeed", "--pp", "4")
    assert ds.returncode == 0, ds.stderr
    plan = json.loads(ds.stdout)
    assert plan["inputs"]["engine"] == "deepspeed" and plan["parallelism"]["vpp"] == 1
    assert plan["inputs"]["dp_overlap"] is False  # the pipeline engine reduces after the flush
    bad = run_cli(*base, "--engine", "deepspeed", "--pp", "4", "--vpp", "2")
    assert bad.returncode == 2 and "without interleaving" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli(*base, "--engine", "deepspeed", "--pp", "4", "--dp-comm-overlap")
    assert bad.returncode == 2 and "after the pipeline's flush" in bad.stderr
    bad = run_cli(*base, "--engine", "colossal")
    assert bad.returncode == 2


def test_search_respects_the_engine_in_the_free_choice():
    w = Workload(LayerShape.of(GPT175), 2048, 1536, "eager", engine="deepspeed")
    out = search(w, gpus("a100", 384), Fixed(tp=8, pp=12), top=2)
    assert out.plans and all(p.cfg.vpp == 1 for p in out.plans)


def test_deepspeed_zero12_gathers_the_updated_weights_after_the_step():
    """DeepSpeed's ZeRO-1/2 all-gather the updated weights in the optimizer step (stage_1_and_2.py),
    so with overlap_comm only the gradients' half of the traffic can hide behind the backward."""
    cl = gpus("a100", 512)
    full, _ = cost.dp_time(cl, 8, 1, 64, 1, 1, overlap=False)
    hidden, _ = cost.dp_time(cl, 8, 1, 64, 1, 1, hide=1e9, params=1e9, overlap=True)
    ds, _ = cost.dp_time(cl, 8, 1, 64, 1, 1, hide=1e9, params=1e9, overlap=True, gather_after=True)
    ddp, _ = cost.dp_time(cl, 8, 1, 64, 0, 1, hide=1e9, params=1e9, overlap=True, gather_after=True)
    assert hidden == pytest.approx(cost.DP_EXPOSED * full)
    assert ds == pytest.approx((0.5 + 0.5 * cost.DP_EXPOSED) * full)
    assert ddp == pytest.approx(hidden)  # ZeRO-0: one all-reduce beside the backward
    sh = LayerShape.of(GPT175)
    w = Workload(sh, 2048, 512, engine="deepspeed", dp_overlap=True)
    co = coefficients(w, cl, Config(tp=8, dp=64, zero=2, mb=1, recompute="full"))
    assert co.t_dp_per_param > 0.5 * full
