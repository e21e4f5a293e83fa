"""`hw benchmark` for real: torch matmuls, a two-process gloo sweep, disk I/O, and `--all-nodes` under SLURM."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from conftest import needs, run_cli
from llmctl.config.base import load_config
from llmctl.config.hardware import HardwareProfile

pytest.importorskip("torch")


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc


def test_compute_measures_the_matmul_rate_into_the_profile(tmp_path):
    out = tmp_path / "local.toml"
    ok(run_cli("hw", "probe", "--emit", str(out)))
    proc = ok(run_cli("hw", "benchmark", "--component", "compute", "--duration", "3", "--emit", str(out),
                      "--json"))
    result = json.loads(proc.stdout)
    assert "compute " in proc.stderr and "TFLOP/s" in proc.stderr  # progress, as it goes
    p = load_config(out, HardwareProfile)
    for dtype in ("bf16", "fp16", "fp32"):
        rate = p.measured[f"matmul_tflops_{dtype}"]
        assert rate > 0 and math.isfinite(rate)
        runs = [d[dtype] for d in result["details"]["compute"].values()]
        assert all(r["runs"] >= 1 and r["n"] >= 128 for r in runs)
    # the planner now takes the measured figure instead of the estimate
    key = "matmul_tflops_bf16" if p.gpu.count else "matmul_tflops_fp32"
    assert p.node_flops() == pytest.approx(p.measured[key] * 1e12 * max(p.gpu.count, 1))


def test_gloo_sweep_in_two_real_processes():
    from llmctl.hw.bench.comm import collectives

    lines = []
    # Each collective may skip its larger sizes once its share of --duration is spent (so a
    # sweep to GBs stays bounded); 8 s leaves every size room even on a loaded machine, where
    # 2 s was eaten by building the communicator.
    r = collectives(8.0, lines.append, nprocs=2, sizes=[4096, 2**20], backend="gloo")
    rows = r["details"]["rows"]
    assert r["details"] == {"backend": "gloo", "processes": 2, "rows": rows}
    assert [(x["op"], x["bytes"]) for x in rows] == [("all_reduce", 4096), ("all_reduce", 2**20),
                                                      ("all_gather", 4096), ("all_gather", 2**20)]
    for x in rows:
        assert x["iters"] >= 1
        # nccl-tests: algbw = S/t; with n = 2, busbw = algbw for all-reduce, algbw/2 for all-gather
        assert x["algbw_gbps"] == pytest.approx(x["bytes"] / (x["time_us"] * 1e-6) / 1e9, rel=0.01)
        factor = 1.0 if x["op"] == "all_reduce" else 0.5
        assert x["busbw_gbps"] == pytest.approx(x["algbw_gbps"] * factor, rel=0.01, abs=1e-4)
    assert r["measured"]["allreduce_busbw_gbps"] == max(x["busbw_gbps"] for x in rows if x["op"] == "all_reduce")
    assert r["measured"]["allgather_busbw_gbps"] > 0


def test_comm_from_the_cli(tmp_path):
    proc = ok(run_cli("hw", "benchmark", "--component", "comm", "--duration", "2", "--json", cwd=tmp_path))
    result = json.loads(proc.stdout)
    assert result["details"]["comm"]["processes"] == 2
    assert {"allreduce_busbw_gbps", "allgather_busbw_gbps"} <= set(result["measured"])
    assert "all_reduce" in proc.stderr and "busbw" in proc.stderr


def test_memory_copy_bandwidth():
    from llmctl.hw.bench.memory import copy_bandwidth

    r = copy_bandwidth(0.5, lambda m: None, nbytes=32 * 2**20)
    assert r["measured"]["memory_bw_gbps"] > 0
    assert all(d["runs"] >= 1 and d["bytes"] == 32 * 2**20 for d in r["details"].values())


def test_disk_sequential_write_and_read(tmp_path):
    from llmctl.hw.bench.disk import sequential

    r = sequential(tmp_path, 0.5, lambda m: None, max_bytes=64 * 2**20)
    d = r["details"]
    assert 0 < d["bytes_written"] <= 64 * 2**20 and d["bytes_read"] == d["bytes_written"]
    assert r["measured"]["disk_write_gbps"] > 0 and r["measured"]["disk_read_gbps"] > 0
    assert list(tmp_path.iterdir()) == []  # the test file is gone


def _slurm_up() -> bool:
    if not shutil.which("srun") or not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s.strip().startswith(("idle", "mix", "alloc")) for s in out.splitlines())


@pytest.mark.slurm
def test_all_nodes_inside_a_slurm_allocation(tmp_path):
    needs("slurm", _slurm_up(), "no SLURM cluster answers sinfo")
    import sys

    out = tmp_path / "all.toml"
    proc = subprocess.run(["srun", "-N1", "-n1", "--time=5", sys.executable, "-m", "llmctl", "hw", "probe",
                           "--all-nodes", "--emit", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    p = load_config(out, HardwareProfile)
    assert p.cluster.nodes == 1 and len(p.cluster.hostnames) == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["all.toml"]  # per-node files cleaned up
