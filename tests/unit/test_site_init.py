"""`llmctl site init` on recorded scheduler output (tests/fixtures/site_init/README.md):
SLURM from a real slurmctld, PBS transcribed from its documented formats. The draft
parses, passes `site check`, and holds the cluster's partitions, GPUs, memory and times."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from llmctl.config.base import validate_data
from llmctl.config.site import SiteConfig
from llmctl.hw.accelerators import lookup
from llmctl.siteinit import draft, inventory
from llmctl.siteinit import pbs as pbs_parse
from llmctl.siteinit import slurm as slurm_parse
from llmctl.siteinit.model import GRES_TYPES, gpu_model, memory_gb

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "site_init"


def drafted(scheduler: str, **kw) -> tuple[str, SiteConfig]:
    text = draft(inventory(scheduler, from_dir=str(FIXTURES / scheduler)), **kw)
    return text, validate_data(tomllib.loads(text), SiteConfig, "draft")


def test_slurm_recorded_cluster():
    text, cfg = drafted("slurm")
    assert cfg.name == "bigcluster" and cfg.scheduler == "slurm"
    assert cfg.default_partition == "gpu"                         # Default=YES
    assert list(cfg.partitions) == ["gpu", "cpu", "debug", "preempt", "maint"]
    gpu = cfg.partitions["gpu"]
    assert (gpu.nodes, gpu.max_nodes, gpu.gpus_per_node, gpu.gpu_type) == (64, 32, 8, "h100")
    assert gpu.gpu_model == "NVIDIA H100 80GB HBM3" and lookup(gpu.gpu_model).name == "H100 SXM5 80GB"
    assert gpu.cpus_per_node == 224
    assert gpu.memory_gb == 1953.1                                 # 2,000,000 MB / 1024, rounded down
    assert (gpu.max_time, gpu.default_time) == ("2-00:00:00", "12:00:00")
    cpu = cfg.partitions["cpu"]
    assert (cpu.nodes, cpu.gpus_per_node, cpu.cpus_per_node, cpu.memory_gb) == (32, 0, 128, 500.0)
    assert (cpu.max_time, cpu.default_time, cpu.max_nodes) == ("7-00:00:00", "04:00:00", None)
    debug = cfg.partitions["debug"]
    assert (debug.nodes, debug.max_nodes, debug.gpus_per_node, debug.gpu_type) == (4, 2, 4, "a100_80g")
    assert debug.gpu_model == "NVIDIA A100-SXM4-80GB" and debug.max_time == "01:00:00"
    assert debug.default_time is None
    # Mixed GPU and CPU nodes: what every node has at least, and the shapes in a comment.
    pre = cfg.partitions["preempt"]
    assert (pre.nodes, pre.gpus_per_node, pre.cpus_per_node, pre.memory_gb) == (96, 0, 128, 500.0)
    assert "#   64 x 224 CPUs, 2000000 MB, 8 GPU(s) h100" in text
    assert cfg.partitions["maint"].max_time == "365-00:00:00"   # MaxTime=UNLIMITED
    assert "state DOWN when drafted" in text and "a hidden partition" in text
    assert "node features: h100,ib,nvlink" in text
    # What the scheduler cannot know stays a placeholder: the nodes are not this machine.
    assert cfg.python is None and "# python = " in text and cfg.account is None
    assert cfg.gpu_request == "gres" and cfg.launcher == "srun"


def test_pbs_transcribed_cluster():
    text, cfg = drafted("pbs", name="pbs01")
    assert (cfg.scheduler, cfg.pbs_dialect, cfg.launcher) == ("pbs", "pbspro", "mpirun")
    assert cfg.default_partition == "workq"                       # the server's default_queue
    assert list(cfg.partitions) == ["workq", "gpu", "debug", "maint"]
    assert "Left out: route (a routing queue)" in text
    workq = cfg.partitions["workq"]
    assert (workq.nodes, workq.gpus_per_node, workq.cpus_per_node) == (2, 0, 128)
    assert workq.memory_gb == 1007.8                               # 1056768000kb
    assert (workq.max_time, workq.default_time) == ("3-00:00:00", "04:00:00")   # 72:00:00
    gpu = cfg.partitions["gpu"]
    assert (gpu.nodes, gpu.max_nodes, gpu.gpus_per_node, gpu.cpus_per_node) == (4, 2, 4, 64)
    assert gpu.memory_gb == 503.3 and (gpu.max_time, gpu.default_time) == ("1-00:00:00", "01:00:00")
    assert gpu.gpu_model is None and gpu.gpu_type is None        # PBS does not say which GPU
    assert cfg.partitions["debug"].max_nodes == 1
    assert "state DOWN" in text                                   # maint: started = False
    assert cfg.gpu_request == "gres"


def test_torque_nodes_and_gpu_names():
    nodes = ("n1\n     state = free\n     np = 40\n     properties = gpu,ib\n     ntype = cluster\n"
             "     status = rectime=1,ncpus=40,physmem=395912552kb,uname=Linux n1 3.10 #1 SMP x86_64\n"
             "     gpus = 4\n     gpu_status = gpu[1]=gpu_id=0;gpu_product_name=Tesla V100-SXM2-32GB;"
             "gpu_mode=Default,gpu[0]=gpu_id=1;gpu_product_name=Tesla V100-SXM2-32GB\n")
    queues = "Queue: batch\n    queue_type = Execution\n    resources_max.walltime = 72:00:00\n"
    cluster = pbs_parse.parse("Server: head\n    default_queue = batch\n", queues, nodes)
    assert cluster.dialect == "torque"
    shape = cluster.partitions["batch"].shape()
    assert (shape.cpus, shape.gpus, shape.memory_mb, shape.gpu_type) == (40, 4, 386633, "Tesla V100-SXM2-32GB")
    assert shape.features == ("gpu", "ib")


@pytest.mark.parametrize("gres,expected", [
    ("gpu:h100:8(S:0-1)", (8, "h100")), ("gpu:8", (8, None)), ("(null)", (0, None)),
    ("gpu:a100:4,gpu:v100:2", (6, None)), ("gpu:h100:8,mps:400", (8, "h100")),
    ("gpu:nvidia_h100_80gb_hbm3:8(S:0)", (8, "nvidia_h100_80gb_hbm3")),
])
def test_gres(gres, expected):
    assert slurm_parse.gres_gpus(gres) == expected


def test_gres_types_name_parts_the_accelerator_table_knows():
    for gres_type, name in GRES_TYPES.items():
        assert lookup(name) is not None, (gres_type, name)
    assert gpu_model("nvidia_h100_80gb_hbm3")[0] == "NVIDIA H100 80GB HBM3"   # AutoDetect=nvml names
    assert gpu_model("a100")[0] is None and gpu_model("v100")[0] is None     # 40 or 80 GB? 16 or 32?


def test_scontrol_fields_keep_values_with_spaces():
    f = slurm_parse.fields("NodeName=n1 OS=Linux 6.1 #1 SMP Reason=Not responding [root@t] CPUTot=4 AllocTRES=")
    assert f["OS"] == "Linux 6.1 #1 SMP" and f["Reason"] == "Not responding [root@t]"
    assert f["CPUTot"] == "4" and f["AllocTRES"] == ""


def test_times_and_sizes():
    assert slurm_parse.slurm_time("2-00:00:00") == 172800 and slurm_parse.slurm_time("UNLIMITED") is None
    assert slurm_parse.slurm_time("NONE") is None and slurm_parse.slurm_time("30:00") == 1800
    assert pbs_parse.walltime("72:00:00") == 259200 and pbs_parse.walltime("3600") == 3600
    assert pbs_parse.size_mb("128gb") == 131072 and pbs_parse.size_mb("63437mb") == 63437
    assert memory_gb(21694) == 21.1   # a whole node's --mem=21G fits in RealMemory=21694


def test_cli_writes_atomically_and_refuses_to_overwrite(cli, tmp_path):
    out = tmp_path / "big.toml"
    r = cli("site", "init", "--scheduler", "slurm", "--from", str(FIXTURES / "slurm"), "--output", str(out))
    assert r.returncode == 0, r.stderr
    check = cli("site", "check", str(out))
    assert check.returncode == 0, check.stderr
    assert "ok: big " in check.stdout and "python is not set" in check.stderr
    before = out.read_text()
    again = cli("site", "init", "--scheduler", "slurm", "--from", str(FIXTURES / "slurm"), "--output", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert out.read_text() == before
    forced = cli("site", "init", "--scheduler", "pbs", "--from", str(FIXTURES / "pbs"), "-o", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert 'scheduler = "pbs"' in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["big.toml"]   # no temporary file left behind
    printed = cli("site", "init", "--scheduler", "pbs", "--from", str(FIXTURES / "pbs"), "--name", "x")
    assert printed.returncode == 0 and printed.stdout.startswith("# Drafted by `llmctl site init`")
    mismatch = cli("site", "init", "--scheduler", "pbs", "--from", str(FIXTURES / "pbs"), "--name", "x",
                   "-o", str(tmp_path / "y.toml"))
    assert mismatch.returncode == 2 and "differs from the file name" in mismatch.stderr
    missing = cli("site", "init", "--scheduler", "pbs", "--from", str(tmp_path))
    assert missing.returncode == 2 and "qstat_Bf.txt" in missing.stderr and "Traceback" not in missing.stderr


def test_python_option_is_written(tmp_path):
    _, cfg = drafted("slurm", python="/shared/envs/llmctl/bin/python")
    assert cfg.python == "/shared/envs/llmctl/bin/python"
