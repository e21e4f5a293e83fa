"""Issue 17: what the user (or a published run) pins is what gets costed.

Each test here failed before its fix: full recomputation that recomputed nothing,
ZeRO-3 overlap that ignored the compute there is to hide it, two bandwidths for one
machine, pinned vpp > 4 refused, micro-batches forced to a multiple of pp without
interleaving, s^2 attention scores counted under flash attention, and FP8.
"""

from __future__ import annotations

import pytest

from llmctl.config.model import ModelConfig
from llmctl.plan.api import predicted
from llmctl.plan.cluster import DEFAULT_SUSTAINED, Cluster, lookup_accelerator
from llmctl.plan.cost import Workload
from llmctl.plan.model_costs import LayerShape
from llmctl.plan.search import Fixed, search

GPT175 = ModelConfig(name="gpt-175b", template="gpt", layers=96, hidden=12288, heads=96, vocab_size=51200,
                     max_seq_len=2048)


def a100s(gpus: int) -> Cluster:
    peak, mem, hbm, intra = lookup_accelerator("NVIDIA A100-SXM4-80GB")
    return Cluster(nodes=gpus // 8, gpus_per_node=8, memory_gb=mem, peak_flops=peak * 1e12,
                   sustained=DEFAULT_SUSTAINED, hbm_bw=hbm * 1e9, intra_bw=intra * 1e9, inter_bw=25e9)


def _one(w, cl, fx):
    out = search(w, cl, fx, top=0, time_limit=60)
    assert out.plans, "the layout must fit"
    return out.plans[0]


def test_pinned_full_recomputation_recomputes_every_block():
    """Issue 17 item 1: --tp 8 --pp 12 --dp 4 --recompute full for a 175B GPT recomputed nothing."""
    w = Workload(LayerShape.of(GPT175), 2048, 1536)
    cl = a100s(384)
    full = _one(w, cl, Fixed(tp=8, pp=12, dp=4, cp=1, vpp=1, mb=1, zero=0, recompute="full"))
    assert full.recomputed == full.layers and sum(full.layers) == 96
    plain = _one(w, cl, Fixed(tp=8, pp=12, dp=4, cp=1, vpp=1, mb=1, zero=0, recompute="none"))
    # one more forward of every block: about a third more compute
    assert full.evaluation.step_time > 1.25 * plain.evaluation.step_time
    pr = predicted(full, w, cl)
    assert pr["hw_tflops_per_gpu"] == pytest.approx(pr["tflops_per_gpu"] * 4 / 3, rel=0.02)
    assert full.evaluation.parts["recompute"] > 0


def test_partial_recomputation_is_its_own_choice():
    """The solver's free choice may recompute only some blocks: named partial, never none or all."""
    w = Workload(LayerShape.of(GPT175), 2048, 1536)
    cl = a100s(384).with_memory(40)
    part = _one(w, cl, Fixed(tp=8, pp=12, dp=4, cp=1, vpp=1, mb=1, zero=1, recompute="partial"))
    assert part.cfg.recompute == "partial"
    assert 0 < sum(part.recomputed) < 96
    full = _one(w, cl, Fixed(tp=8, pp=12, dp=4, cp=1, vpp=1, mb=1, zero=1, recompute="full"))
    assert part.evaluation.step_time < full.evaluation.step_time
