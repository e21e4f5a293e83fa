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
from llmctl.plan.cluster import DEFAULT_SUSTAINED, TP_BUS_EFFICIENCY, Cluster, lookup_accelerator
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


BLOOM = ModelConfig(name="bloom-176b", template="gpt", layers=70, hidden=14336, heads=112, vocab_size=250880,
                    max_seq_len=2048)
MTNLG = ModelConfig(name="mt-nlg-530b", template="gpt", layers=105, hidden=20480, heads=128, vocab_size=51200,
                    max_seq_len=2048)


def test_pinned_vpp_above_four_is_honoured():
    """Item 4: MAX_VPP = 4 silently refused --vpp 6 (with a false divisibility message)."""
    w = Workload(LayerShape.of(GPT175), 2048, 1536)
    r = _one(w, a100s(384), Fixed(tp=8, pp=12, dp=4, cp=1, vpp=6, mb=1, zero=0, recompute="full"))
    assert r.cfg.vpp == 6 and len(r.layers) == 72 and min(r.layers) >= 1


def test_one_f_one_b_takes_any_number_of_micro_batches():
    """Item 5: BLOOM (tp 4, pp 12, dp 8, micro-batch 2, batch 2048: m = 128, not a multiple of 12)
    and MT-NLG (tp 8, pp 35, dp 8, micro-batch 1, batch 1920: m = 240, not a multiple of 35)
    were refused; only the interleaved schedule needs m % pp == 0."""
    bloom = _one(Workload(LayerShape.of(BLOOM), 2048, 2048), a100s(384),
                 Fixed(tp=4, pp=12, dp=8, cp=1, vpp=1, mb=2, zero=1, recompute="full"))
    assert bloom.m == 128 and bloom.cfg.pp == 12
    mtnlg = _one(Workload(LayerShape.of(MTNLG), 2048, 1920), a100s(2240),
                 Fixed(tp=8, pp=35, dp=8, cp=1, vpp=1, mb=1, zero=1, recompute="full"))
    assert mtnlg.m == 240 and sum(mtnlg.layers) == 105
    # the interleaved schedule still needs it: no plan, and the free choice of vpp stays at 1
    free_vpp = _one(Workload(LayerShape.of(MTNLG), 2048, 1920), a100s(2240),
                    Fixed(tp=8, pp=35, dp=8, cp=1, mb=1, zero=1, recompute="full"))
    assert free_vpp.cfg.vpp == 1


def _cli_model(tmp_path, model):
    import json

    p = tmp_path / "m.json"
    p.write_text(json.dumps(model.to_data()))
    return str(p)


def test_pinned_schedule_errors_name_the_rule_that_fails(tmp_path):
    from conftest import run_cli

    m = _cli_model(tmp_path, GPT175)
    base = ["plan", "compute", "--model", m, "--site", "slurm-a100-ib", "--nodes", "48", "--global-batch", "1536",
            "--seq-len", "2048", "--strategy", "manual", "--tp", "8", "--pp", "12", "--dp", "4", "--json"]
    ok = run_cli(*base, "--vpp", "6", "--recompute", "full")
    assert ok.returncode == 0, ok.stderr
    too_deep = run_cli(*base, "--vpp", "9")
    assert too_deep.returncode == 2 and "pp*vpp = 12*9 = 108" in too_deep.stderr and "96 layers" in too_deep.stderr
    odd = run_cli(*base[:9], "1560", *base[10:], "--vpp", "2", "--micro-batch", "1")
    assert odd.returncode == 2, odd.stdout
    assert "interleaved schedule" in odd.stderr and "390" in odd.stderr and "multiple of pp = 12" in odd.stderr
    assert "micro_batch*dp*pp" not in odd.stderr


LLAMA3_405B = ModelConfig(name="llama3-405b", template="llama", layers=126, hidden=16384, heads=128, kv_heads=8,
                          ffn=53248, vocab_size=128256, max_seq_len=8192)


def h100s(gpus: int) -> Cluster:
    peak, mem, hbm, intra = lookup_accelerator("NVIDIA H100 80GB HBM3")
    return Cluster(nodes=gpus // 8, gpus_per_node=8, memory_gb=mem, peak_flops=peak * 1e12,
                   sustained=DEFAULT_SUSTAINED, hbm_bw=hbm * 1e9, intra_bw=intra * 1e9, inter_bw=50e9)


def test_flash_attention_keeps_no_scores_and_llama3_405b_fits():
    """Item 6: the published Llama 3 405B layout (Dubey et al. 2024 Table 4: 16,384 H100s, tp 8, cp 1,
    pp 16, dp 128, 8K sequences, batch 16 per DP rank, no recomputation) was refused: memory counted the
    s^2 attention scores that SDPA's fused kernels never store."""
    sh = LayerShape.of(LLAMA3_405B)
    s = 8192
    eager, flash = sh.act_bytes(s, 1, 8, 1, True, "eager"), sh.act_bytes(s, 1, 8, 1, True, "flash")
    assert eager - flash == pytest.approx((2 * 128 * s * s - 4 * 128 * s) / 8)
    fx = Fixed(tp=8, cp=1, pp=16, dp=128, recompute="none")
    w = Workload(sh, s, 2048, "flash")
    r = _one(w, h100s(16384), fx)
    assert r.evaluation.fits and r.cfg.recompute == "none"
    out = search(Workload(sh, s, 2048, "eager"), h100s(16384), fx, top=0)
    assert not out.plans


def test_infeasible_message_names_activations_when_they_bind(tmp_path):
    import json

    from conftest import run_cli

    p = tmp_path / "m.json"
    p.write_text(json.dumps(LLAMA3_405B.to_data()))
    r = run_cli("plan", "compute", "--model", str(p), "--site", "slurm-h100-pyxis", "--nodes", "2048",
                "--global-batch", "2048", "--seq-len", "8192", "--tp", "8", "--pp", "16", "--dp", "128",
                "--cp", "1", "--recompute", "none", "--attention", "eager", "--top", "0")
    assert r.returncode == 2, r.stdout
    assert "activations bind" in r.stderr and "eager attention" in r.stderr


def test_every_path_to_a_profile_gives_the_same_plan(tmp_path):
    """Item 3: `plan compute --site slurm-a100-ib` costed a layout at 14.26 s, the same layout through
    the profile `hw probe --site` (or the scaffolded a100x8.toml) wrote at 13.33 s: the profile's 300 GB/s
    NVLink link rate was taken as the collective's bus bandwidth, the site's as half of it. One rule now."""
    import json

    import tomli_w

    from conftest import run_cli
    from llmctl.scaffold import A100X8_PROFILE

    m = _cli_model(tmp_path, GPT175)
    probed = tmp_path / "probed.toml"
    r = run_cli("hw", "probe", "--site", "slurm-a100-ib", "--nodes", "32", "--emit", str(probed))
    assert r.returncode == 0, r.stderr
    scaffolded = tmp_path / "a100x8.toml"
    scaffolded.write_text(tomli_w.dumps(A100X8_PROFILE))
    layout = ["--global-batch", "1536", "--seq-len", "2048", "--strategy", "manual", "--tp", "8", "--pp", "8",
              "--dp", "4", "--recompute", "full", "--json"]
    times = {}
    for name, where in (("site", ["--site", "slurm-a100-ib", "--nodes", "32"]),
                        ("hw probe --site", ["--hardware", str(probed)]),
                        ("scaffold", ["--hardware", str(scaffolded), "--nodes", "32"])):
        r = run_cli("plan", "compute", "--model", m, *where, *layout)
        assert r.returncode == 0, r.stderr
        times[name] = json.loads(r.stdout)["predicted"]["step_time_s"]
    assert len(set(times.values())) == 1, times


def test_a_measured_bus_bandwidth_replaces_the_link_rate():
    """`hw benchmark`'s all-gather bus bandwidth among the node's GPUs is what TP collectives see."""
    from llmctl.config.base import validate_data
    from llmctl.config.hardware import HardwareProfile
    from llmctl.plan.cluster import build_cluster
    from llmctl.scaffold import a100x8_profile

    data = a100x8_profile()
    cl = build_cluster(validate_data(data, HardwareProfile, "p"), nodes=2)
    assert cl.intra_bw == pytest.approx(300e9 * TP_BUS_EFFICIENCY["A100"])  # NVLink x the A100's calibrated fraction
    assert cl.hbm_bw == pytest.approx(2039e9) and cl.inter_bw == pytest.approx(25e9)
    data["measured"] = {"allgather_busbw_gbps": 231.5, "memory_bw_gbps": 1800.0}
    cl = build_cluster(validate_data(data, HardwareProfile, "p"), nodes=2)
    assert cl.intra_bw == pytest.approx(231.5e9) and cl.hbm_bw == pytest.approx(1800e9)


def test_zero3_exposure_depends_on_the_compute_that_hides_it():
    """Item 2: ZeRO-3's gathers and reduce-scatters were charged at a constant 25 %, whatever the
    compute there was to hide them. 175B GPT, ZeRO-3 without model parallelism, batch 1536 (the
    setting of Narayanan et al. 2021 Table 2): at 384 GPUs (micro-batch 4) the per-block compute
    covers the traffic; at 1536 GPUs (micro-batch 1) the traffic is larger than the compute and the
    throughput per GPU collapses. Those runs were DeepSpeed's ZeRO-3 (--engine deepspeed)."""
    from llmctl.plan.cost import Config, coefficients

    w = Workload(LayerShape.of(GPT175), 2048, 1536, "eager", engine="deepspeed")
    tflops = {}
    for n, mb in ((384, 4), (1536, 1)):
        cl = a100s(n)
        r = _one(w, cl, Fixed(tp=1, pp=1, dp=n, cp=1, vpp=1, mb=mb, zero=3, recompute="full"))
        tflops[n] = predicted(r, w, cl)["tflops_per_gpu"]
        parts = r.evaluation.parts
        share = parts["zero3_comm"] / r.evaluation.step_time
        # covered traffic costs only ZERO3_OVERLAP_EXPOSED of itself; uncovered traffic all of it
        assert (share < 0.4) if n == 384 else (share > 0.5), (n, share)
    assert tflops[1536] < 0.5 * tflops[384]
    # with links fast enough nothing is exposed but each pass's first gather
    fast = Cluster(nodes=48, gpus_per_node=8, memory_gb=80, peak_flops=312e12, sustained=0.69, hbm_bw=2e12,
                   intra_bw=1e15, inter_bw=1e15)
    co = coefficients(w, fast, Config(dp=384, mb=4, zero=3, recompute="full"))
    assert co.time_parts["zero3_comm"] < 0.01 * co.t_layer


def test_fp8_runs_the_linear_layers_at_the_fp8_rate_and_keeps_fp8_copies():
    """FP8 (Transformer Engine): the linear layers' GEMMs at H100's FP8 rate (1979 vs 989 TFLOP/s
    dense), attention core and head in bf16; FP8 copies of the linear weights (and transposes) and
    their scaling state in memory, the GEMM inputs saved for backward in FP8."""
    from llmctl.plan import cost
    from llmctl.plan.cost import Config, coefficients

    model = ModelConfig(name="l70", template="llama", layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672,
                        vocab_size=128256, max_seq_len=8192)
    sh = LayerShape.of(model)
    cl = h100s(64)
    cl8 = Cluster(**{**cl.__dict__, "fp8_flops": 1978.9e12})
    cfg = Config(tp=8, pp=4, dp=2, vpp=1, mb=1, zero=1, recompute="none")
    bf = coefficients(Workload(sh, 8192, 64, "flash", "bf16"), cl8, cfg)
    f8 = coefficients(Workload(sh, 8192, 64, "flash", "fp8"), cl8, cfg)
    lin = sh.linear_flops(8192) / sh.layer_flops(8192)
    assert 0.8 < lin < 1.0
    ratio = f8.time_parts["compute"] / bf.time_parts["compute"]
    # linear share at half the time over the FP8 GEMMs' calibrated share, the rest unchanged,
    # plus the casts
    fp8_lin = lin / 2 / cost.FP8_SUSTAINED
    assert (1 - lin) + fp8_lin < ratio < (1 - lin) + fp8_lin + 0.05
    assert f8.act_layer < bf.act_layer and f8.layer_static_bytes > 2 * sh.linear_params() / 8
    assert bf.layer_static_bytes == 0.0
    with pytest.raises(Exception, match="no FP8"):
        coefficients(Workload(sh, 8192, 64, "flash", "fp8"), a100s(64), cfg)


def test_fp8_through_the_cli(tmp_path):
    import json

    from conftest import run_cli

    m = _cli_model(tmp_path, GPT175)
    args = ["plan", "compute", "--model", m, "--nodes", "8", "--global-batch", "256", "--seq-len", "2048",
            "--top", "0", "--json"]
    bf = run_cli(*args, "--site", "slurm-h100-pyxis")
    f8 = run_cli(*args, "--site", "slurm-h100-pyxis", "--precision", "fp8")
    assert bf.returncode == 0 and f8.returncode == 0, (bf.stderr, f8.stderr)
    d8 = json.loads(f8.stdout)
    assert d8["inputs"]["precision"] == "fp8"
    assert d8["predicted"]["step_time_s"] < 0.85 * json.loads(bf.stdout)["predicted"]["step_time_s"]
    a100 = run_cli(*args, "--site", "slurm-a100-ib", "--precision", "fp8")
    assert a100.returncode == 2 and "no FP8" in a100.stderr and "Traceback" not in a100.stderr


def test_groups_that_do_not_divide_a_node_straddle_two():
    """tp 3 on 8-GPU nodes puts ranks 6, 7, 8 in one group, across two nodes: not intra-node."""
    from llmctl.plan import comm
    from llmctl.plan.search import degree_tuples

    net = comm.NET_BUS_EFFICIENCY  # the fraction of the link rate a ring across nodes reaches
    assert comm.group_bw(1, 3, 8, 100.0, 1.0) == net and comm.group_bw(1, 4, 8, 100.0, 1.0) == 100.0
    tuples, _ = degree_tuples(Workload(LayerShape.of(GPT175), 2048, 1536), a100s(384), Fixed())
    assert {t for t, *_ in tuples} == {1, 2, 4, 8}


def test_explain_error_names_dominant_terms_and_sensitivities(tmp_path):
    import json

    from conftest import run_cli

    r = run_cli("plan", "compute", "--model", _cli_model(tmp_path, GPT175), "--site", "slurm-a100-ib", "--nodes", "48",
                "--global-batch", "1536", "--seq-len", "2048", "--top", "0", "--explain-error", "--json")
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)["explain_error"]
    assert e["dominant"][0][0] == "compute"
    el = e["elasticity"]
    assert -1.0 <= el["sustained fraction of peak"] < -0.5 and abs(el["CP exposure"]) < 1e-9
    assert list(el)[0] == "sustained fraction of peak"  # sorted by magnitude


def test_overlapped_zero3_traffic_still_costs_a_share_of_itself():
    """Covered ZeRO-3 traffic in DeepSpeed's ZeRO-3 is not free: what its 2021 runs show is that
    covered traffic still costs ZERO3_OVERLAP_EXPOSED of itself, and traffic the compute cannot
    cover is exposed whole."""
    from llmctl.plan import cost
    from llmctl.plan.cost import Config, coefficients

    w = Workload(LayerShape.of(GPT175), 2048, 1536, "eager", engine="deepspeed")
    cl = a100s(384)
    co = coefficients(w, cl, Config(dp=384, mb=4, zero=3, recompute="full"))
    old = cost.ZERO3_OVERLAP_EXPOSED
    try:
        cost.ZERO3_OVERLAP_EXPOSED = 0.0
        free = coefficients(w, cl, Config(dp=384, mb=4, zero=3, recompute="full"))
    finally:
        cost.ZERO3_OVERLAP_EXPOSED = old
    assert co.time_parts["zero3_comm"] > free.time_parts["zero3_comm"] + 0.1 * old * free.t_layer


def test_tp_overlap_hides_tensor_parallel_collectives_behind_the_gemms():
    """--tp-comm-overlap (Megatron-Core / Transformer Engine): the TP collectives cost
    TP_OVERLAP_EXPOSED of themselves while the linear GEMMs cover them, all of what they do not cover;
    without overlap (the default) they are fully exposed."""
    from llmctl.plan import cost
    from llmctl.plan.cost import Config, coefficients

    sh = LayerShape.of(GPT175)
    cfg = Config(tp=8, pp=8, dp=1, mb=1, recompute="selective")
    cl = a100s(64)
    off = coefficients(Workload(sh, 2048, 64, "eager"), cl, cfg).time_parts["tp_comm"]
    on = coefficients(Workload(sh, 2048, 64, "eager", tp_overlap=True), cl, cfg).time_parts["tp_comm"]
    assert on == pytest.approx(off * cost.TP_OVERLAP_EXPOSED / cost.TP_EXPOSED)
    # a link so slow that the GEMMs cannot cover it: the excess is exposed
    slow = Cluster(nodes=8, gpus_per_node=8, memory_gb=80, peak_flops=312e12, sustained=0.69, hbm_bw=2e12,
                   intra_bw=1e9, inter_bw=1e9)
    off_s = coefficients(Workload(sh, 2048, 64, "eager"), slow, cfg).time_parts["tp_comm"]
    on_s = coefficients(Workload(sh, 2048, 64, "eager", tp_overlap=True), slow, cfg).time_parts["tp_comm"]
    assert off_s * cost.TP_OVERLAP_EXPOSED < on_s < off_s


def test_sustained_fraction_is_calibrated_per_gpu_generation():
    """Every path to a Cluster uses the same calibrated fraction of peak for a known GPU; a measured
    matmul rate replaces it; an unknown GPU gets DEFAULT_SUSTAINED."""
    from llmctl.config.base import validate_data
    from llmctl.config.hardware import HardwareProfile
    from llmctl.plan.cluster import SUSTAINED_BY_GPU, build_cluster, sustained_fraction
    from llmctl.scaffold import a100x8_profile

    assert sustained_fraction("NVIDIA H100 80GB HBM3") == SUSTAINED_BY_GPU["H100"]
    assert sustained_fraction("NVIDIA A100-SXM4-80GB") == SUSTAINED_BY_GPU["A100"]
    assert sustained_fraction("Some Future GPU") == DEFAULT_SUSTAINED
    data = a100x8_profile()
    cl = build_cluster(validate_data(data, HardwareProfile, "p"), nodes=2)
    assert cl.sustained == SUSTAINED_BY_GPU["A100"]
    data["measured"] = {"matmul_tflops_bf16": 250.0}
    cl = build_cluster(validate_data(data, HardwareProfile, "p"), nodes=2)
    assert cl.sustained == pytest.approx(250e12 / cl.peak_flops)
