"""gpu-check on CPU (`scripts/gpu-check.sh --cpu`, tiny shapes): the script runs every
section that can run here, writes one JSON report of the documented shape whose figures
are positive and finite, and a text summary; sections that cannot run say why."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")


def _numbers(v, path=""):
    """Every number in a result tree, with its key path."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _numbers(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _numbers(x, f"{path}[{i}]")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        yield path, v


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "2"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--cpu"], cwd=out, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "gpu-check.json").read_text()), (out / "gpu-check.txt").read_text(), r


def test_report_shape(report):
    out, rep, text, _ = report
    assert rep["schema"] == "llmctl-gpu-check/1" and rep["mode"] == "cpu"
    assert rep["environment"]["torch"] and rep["seconds"] > 0
    assert list(rep["sections"]) == ["probe", "bench", "train_gpt2", "train_1b", "serve", "tp2", "nccl"]
    for name, sec in rep["sections"].items():
        assert set(sec) >= {"status", "seconds", "budget_s", "reason", "error", "results", "skipped_parts"}, name
        assert sec["status"] in ("ok", "skipped", "partial", "failed"), name
    s = rep["sections"]
    for name in ("probe", "bench", "train_gpt2", "train_1b", "serve"):
        assert s[name]["status"] == "ok", (name, s[name]["error"])
    assert s["nccl"]["status"] == "skipped" and "NCCL" in s["nccl"]["reason"]
    assert "nvidia-smi" in s["probe"]["skipped_parts"]["nvidia_smi"]
    assert (out / "node-profile.toml").is_file()
    assert text.splitlines()[0].startswith("llmctl gpu-check (cpu)")
    assert all(name in text for name in rep["sections"])


def test_figures_positive_and_finite(report):
    _, rep, _, _ = report
    for name, sec in rep["sections"].items():
        for path, v in _numbers(sec["results"]):
            if "loss" in path:
                assert math.isfinite(v), (name, path)
            elif isinstance(v, int):  # counts (GPUs here: none) and sizes
                assert v >= 0, (name, path, v)
            else:  # every measured or derived figure
                assert math.isfinite(v) and v > 0, (name, path, v)
    s = rep["sections"]
    b = s["bench"]["results"]
    assert b["llmctl_matmul_bf16_tflops"] > 0 and b["torch_copy_gbps"] > 0
    g = s["train_gpt2"]["results"]
    for variant in ("llmctl_eager", "llmctl_compiled", "reference_eager", "reference_compiled"):
        assert g[variant]["tokens_per_s"] > 0 and g[variant]["mfu"] > 0
    assert g["ratios"]["compiled_llmctl_over_reference"] > 0
    # same shape, same data, same initial scale: the first losses are near ln(vocab)
    for losses in g["first_losses"].values():
        assert abs(losses[0] - math.log(512)) < 1.0
    one = s["train_1b"]["results"]
    assert one["step_time_s"] > 0 and one["plan"]["datasheet"]["predicted_step_time_s"] > 0
    assert one["plan"]["measured"]["measured_over_predicted"] > 0
    sv = s["serve"]["results"]
    for key in ("llmctl_c1", "llmctl_c64"):
        assert sv[key]["decode_tokens_per_s"] > 0 and sv[key]["ttft_s"] > 0
    # transformers' side is measured, or says why not (a loaded CPU can blur decode and set-up)
    for key in ("hf_default_c1", "hf_default_c64"):
        assert key in sv or s["serve"]["skipped_parts"][key], key
    assert sv["llmctl_c64"]["tokens"] == 64 * sv["shape"]["new_tokens"]
    assert sv["roofline_bs1_tokens_per_s"] > 0
    # both paged attention paths measured (the default and the other one)
    assert sv["llmctl_blockwise_c64"]["tokens"] == sv["llmctl_c64"]["tokens"]
    assert sv["ratios"]["blockwise_over_gather_c1"] > 0


def test_tp2_decode_on_two_cpu_ranks(report):
    """The tp2 section ran the serving engine on 2 MPI ranks (the launcher on PATH, its
    flavour's flags), all-reducing over MPI; or, without mpi4py, says why it could not."""
    _, rep, text, _ = report
    sec = rep["sections"]["tp2"]
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        assert sec["status"] == "skipped" and "mpi4py" in sec["reason"]
        return
    assert sec["status"] == "ok", sec["error"]
    r = sec["results"]
    assert r["ranks"] == 2 and r["backend"] == "mpi"
    assert r["launcher"]["flavour"] in ("openmpi", "mpich", "other")
    new = rep["sections"]["serve"]["results"]["shape"]["new_tokens"]
    for n in (1, 64):
        assert r[f"llmctl_tp2_c{n}"]["tokens"] == n * new
        assert r[f"llmctl_tp2_c{n}"]["decode_tokens_per_s"] > 0
        assert r["ratios"][f"tp2_over_tp1_c{n}"] > 0
    assert "tp2" in text and "mpi all-reduce" in text


def test_tp2_launch_flags_follow_the_launcher_flavour():
    from llmctl.gpucheck.tpdecode import launch_command

    env = {"PYTHONPATH": "/x", "MPI4PY_LIBMPI": "libmpi.so.40"}
    ompi = launch_command("/usr/bin/mpirun", "openmpi", ["python", "-m", "m"], env)
    assert ompi[:3] == ["/usr/bin/mpirun", "-n", "2"] and "--oversubscribe" in ompi
    assert ("--allow-run-as-root" in ompi) is (os.geteuid() == 0)
    assert ompi[ompi.index("PYTHONPATH") - 1] == "-x" and ompi[-3:] == ["python", "-m", "m"]
    assert launch_command("mpiexec", "mpich", ["python"], env) == ["mpiexec", "-n", "2", "python"]


def test_probe_agrees_with_recorded_h100():
    from llmctl.gpucheck.node import compare, parse_smi_csv
    from llmctl.hw.profile import probe_node
    from llmctl.hw.recorded import RecordedNvml

    fx = FIXTURES / "hw" / "h100-x1"
    data, _ = probe_node(RecordedNvml(fx / "pynvml.json"))
    rows = parse_smi_csv("0, NVIDIA H100 80GB HBM3, 81559, 580.159.04\n")
    assert all(compare(data, rows).values())
    assert not compare(data, rows * 2)["count"]
    assert not compare(data, parse_smi_csv("0, NVIDIA H100 80GB HBM3, 40960, 580.159.04\n"))["gpu0_memory"]
