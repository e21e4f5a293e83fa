"""Speed of the login-node probe, and the CPU matmul rate (`make bench`; not pass/fail gates)."""

from __future__ import annotations

import pytest

from conftest import FIXTURES
from llmctl.hw import nvml
from llmctl.hw.profile import probe_node
from llmctl.hw.recorded import RecordedNvml


def test_bench_probe_this_node(benchmark):
    data, _ = benchmark(probe_node)
    assert data["node"]["cpus"] >= 1


def test_bench_replay_h100_nvml(benchmark):
    r = benchmark(lambda: nvml.read(RecordedNvml(FIXTURES / "hw" / "h100-x1" / "pynvml.json")))
    assert r["devices"][0]["memory_mib"] == 81559


def test_bench_cpu_matmul_fp32_1024(benchmark):
    torch = pytest.importorskip("torch")
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    c = benchmark(torch.matmul, a, b)
    assert c.shape == (1024, 1024)
    if benchmark.stats:  # --benchmark-enable: report the rate pytest-benchmark measured
        benchmark.extra_info["tflops"] = 2 * 1024**3 / benchmark.stats.stats.median / 1e12
