"""`llmctl hw probe` / `hw benchmark` as a user runs them: real CLI subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO, run_cli
from llmctl.config.base import load_config
from llmctl.config.hardware import HardwareProfile

H100 = FIXTURES / "hw" / "h100-x1"


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    return proc


def clean_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr
    return proc.stderr


def test_probe_this_machine_writes_a_valid_profile(tmp_path):
    out = tmp_path / "configs" / "hw" / "local.toml"
    proc = ok(run_cli("hw", "probe", "--emit", str(out)))
    assert f"wrote {out}" in proc.stdout
    p = load_config(out, HardwareProfile)
    assert p.node.cpus and p.node.memory_gb and p.probe.timestamp
    if p.gpu.count == 0:
        assert any(n.startswith("CPU-only profile") for n in p.notes)
        assert p.limits.estimated_flops and p.limits.source == "estimate"  # the planner has a number
    assert p.node_flops() is not None


def test_probe_does_not_import_torch():
    code = ("import sys\nfrom llmctl.cli import main\nrc = main(['hw', 'probe', '--format', 'json'])\n"
            "heavy = [m for m in ('torch', 'deepspeed', 'mpi4py', 'transformers') if m in sys.modules]\n"
            "print('HEAVY', heavy, rc, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY [] 0" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["gpu"]["count"] >= 0


def test_replayed_h100_node_end_to_end(tmp_path):
    out = tmp_path / "h100.json"
    env = {"LLMCTL_NVML_REPLAY": str(H100 / "pynvml.json")}
    proc = ok(run_cli("hw", "probe", "--emit", str(out), "--verbose", env=env))
    assert "1x NVIDIA H100 80GB HBM3 (driver 580.159.04)" in proc.stdout
    data = json.loads(out.read_text())  # .json suffix -> JSON
    p = load_config(out, HardwareProfile)
    assert data["gpu"]["devices"][0]["memory_mib"] == 81559 and p.gpu.devices[0].compute_capability == "9.0"
    assert p.probe.gpu_source == "nvml"
    raw = tmp_path / "h100.raw"
    assert (raw / "nvml.json").is_file() and (raw / "interfaces.json").is_file()
    # what --verbose recorded replays to the same profile: it is a new fixture
    again = tmp_path / "again.toml"
    ok(run_cli("hw", "probe", "--emit", str(again), env={"LLMCTL_NVML_REPLAY": str(raw / "nvml.json")}))
    q = load_config(again, HardwareProfile)
    assert q.gpu.devices == p.gpu.devices and q.gpu.topology == p.gpu.topology


def test_probe_prints_toml_without_emit():
    import tomllib

    proc = ok(run_cli("hw", "probe"))
    assert "[limits]" in proc.stdout
    assert "gpu" in tomllib.loads(proc.stdout)


def test_site_cluster_profile(tmp_path):
    out = tmp_path / "cluster.toml"
    ok(run_cli("hw", "probe", "--site", "slurm-h100-pyxis", "--nodes", "2", "--emit", str(out)))
    p = load_config(out, HardwareProfile)
    assert p.cluster.nodes == 2 and p.cluster.site == "slurm-h100-pyxis"
    assert p.accelerator.name == "H100 SXM5 80GB" and p.limits.inter_node_bw_gbps == 400.0


def test_unwritable_emit_fails_first_and_writes_nothing(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    clean_error(run_cli("hw", "probe", "--emit", str(blocker / "p.toml")), "cannot write", "is a file")
    clean_error(run_cli("hw", "probe", "--emit", str(tmp_path)), "is a directory")
    clean_error(run_cli("hw", "benchmark", "--component", "disk", "--duration", "1",
                        "--emit", str(blocker / "p.toml")), "cannot write")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("args,needle", [
    (["--component", "gpu"], "Invalid value for '--component'"),
    (["--duration", "0"], "Invalid value for '--duration'"),
    (["--duration", "-5"], "Invalid value for '--duration'"),
])
def test_benchmark_bad_options(args, needle):
    clean_error(run_cli("hw", "benchmark", *args), needle)


def test_malformed_site_node_shape(tmp_path):
    from llmctl.resources import data_dir

    text = (data_dir("site-configs") / "slurm-a100-ib.toml").read_text()
    site = tmp_path / "bad.toml"
    site.write_text(text.replace("gpus_per_node = 8", "gpus_per_node = -8", 1))
    out = tmp_path / "p.toml"
    err = clean_error(run_cli("hw", "probe", "--site", str(site), "--emit", str(out)))
    assert f"{site}: partitions.gpu.gpus_per_node: " in err and "greater than or equal to 0" in err
    assert not out.exists()
    # more nodes than one job may use is a planning question, not an error (issue 17 item 7)
    r = run_cli("hw", "probe", "--site", "slurm-a100-ib", "--nodes", "33", "--emit", str(out))
    assert r.returncode == 0, r.stderr
    assert "nodes = 33" in out.read_text() and "max_nodes" in out.read_text()


def test_benchmark_refuses_a_broken_profile_before_running(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[gpu]\ncount = -1\n")
    clean_error(run_cli("hw", "benchmark", "--component", "compute", "--emit", str(bad)),
                f"{bad}: gpu.count: ")
    assert bad.read_text() == "[gpu]\ncount = -1\n"


def test_all_nodes_needs_an_allocation():
    proc = run_cli("hw", "probe", "--all-nodes", env={"SLURM_JOB_ID": ""})
    clean_error(proc, "inside a SLURM allocation")


def test_nvml_replay_path_must_exist(tmp_path):
    clean_error(run_cli("hw", "probe", env={"LLMCTL_NVML_REPLAY": str(tmp_path / "none.json")}),
                "recording not found")


def test_synthetic_fixture_is_up_to_date(tmp_path):
    """The checked-in 8-GPU recording is exactly what its generator writes."""
    gen = REPO / "tests" / "fixtures" / "hw" / "make_synthetic.py"
    copy = tmp_path / gen.name
    copy.write_text(gen.read_text())
    subprocess.run([sys.executable, str(copy)], check=True, capture_output=True)
    assert (tmp_path / "hgx-h100x8-synthetic.json").read_text() == gen.with_name(
        "hgx-h100x8-synthetic.json").read_text()
