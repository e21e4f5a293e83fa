"""`llmctl doctor` without a cluster: the local site passes; a missing python, a partition
the cluster lacks, more than its nodes have, and NCCL names that do not exist FAIL
with the name in the line; exit 2 on any FAIL."""

from __future__ import annotations

import json
from pathlib import Path

from llmctl.config.base import validate_data
from llmctl.config.site import SiteConfig
from llmctl.doctor import FAIL, OK, WARN, check_network, check_partitions
from llmctl.siteinit import inventory

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "site_init" / "slurm"


def site(**extra) -> SiteConfig:
    data = {"name": "t", "scheduler": "slurm", "default_partition": "gpu", "python": "/x/python",
            "partitions": {"gpu": {"nodes": 64, "gpus_per_node": 8, "gpu_type": "h100", "cpus_per_node": 224,
                                   "memory_gb": 1953.1, "max_time": "2-00:00:00"}}}
    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
    merge(data, extra)
    return validate_data(data, SiteConfig, "t")


def test_local_site_passes(cli, in_tmp):
    r = cli("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("0 FAIL")
    data = json.loads(cli("doctor", "--json").stdout)
    assert data["ok"] is True
    assert {c["name"] for c in data["checks"]} >= {"site", "commands", "python", "network"}
    assert all(c["status"] != FAIL for c in data["checks"])


def test_missing_python_fails_and_exits_2(cli, in_tmp):
    (in_tmp / "nopy.toml").write_text('name = "nopy"\nscheduler = "mpi"\ndefault_partition = "p"\n'
                                      'python = "/nonexistent/bin/python3"\ngpu_request = "none"\n'
                                      '[partitions.p]\nnodes = 1\ncpus_per_node = 1\nmemory_gb = 1\n')
    r = cli("doctor", "--site", "nopy.toml")
    assert r.returncode == 2, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("FAIL") and "python" in x)
    assert "/nonexistent/bin/python3" in line and "Traceback" not in r.stderr
    data = json.loads(cli("doctor", "--site", "nopy.toml", "--json").stdout)
    assert data["ok"] is False


def test_unloadable_site_is_a_fail_line(cli, in_tmp):
    (in_tmp / "broken.toml").write_text('name = "broken"\nscheduler = "slurm"\n')
    r = cli("doctor", "--site", "broken.toml")
    assert r.returncode == 2 and r.stdout.startswith("FAIL  site") and "default_partition" in r.stdout


def test_partitions_against_the_recorded_cluster():
    cluster = inventory("slurm", from_dir=str(RECORDED))
    assert [c.status for c in check_partitions(site(), cluster)] == [OK]
    missing = check_partitions(site(partitions={"a100": {"nodes": 1, "cpus_per_node": 1, "memory_gb": 1}}),
                               cluster)
    bad = [c for c in missing if c.status == FAIL]
    assert len(bad) == 1 and "'a100' is not on the cluster" in bad[0].detail
    too_big = check_partitions(site(partitions={"gpu": {"nodes": 64, "gpus_per_node": 16, "cpus_per_node": 224,
                                                        "memory_gb": 4000, "max_time": "3-00:00:00"}}), cluster)
    assert too_big[0].status == FAIL
    for words in ("gpus_per_node 16 > 8", "memory_gb 4000.0 > 1953.1", "max_time 3-00:00:00 > 2-00:00:00"):
        assert words in too_big[0].detail
    smaller = check_partitions(site(partitions={"gpu": {"cpus_per_node": 200}}), cluster)
    assert smaller[0].status == WARN and "cpus_per_node 200 < 224" in smaller[0].detail
    down = check_partitions(site(partitions={"maint": {"nodes": 4, "cpus_per_node": 64, "memory_gb": 250,
                                                       "gpus_per_node": 4}}), cluster)
    assert any(c.status == WARN and "state DOWN" in c.detail for c in down)


def _sysfs(tmp: Path) -> tuple[Path, Path]:
    ib, net = tmp / "ib", tmp / "net"
    for d in ("mlx5_0", "mlx5_1"):
        (ib / d).mkdir(parents=True)
    for d in ("eth0", "ib0", "lo"):
        (net / d).mkdir(parents=True)
    return ib, net


def test_nccl_names_against_sysfs(tmp_path):
    ib, net = _sysfs(tmp_path)
    good = site(env={"NCCL_IB_HCA": "mlx5", "NCCL_SOCKET_IFNAME": "=ib0"},
                network={"inter_node": "InfiniBand"})
    assert {c.status for c in check_network(good, here=True, ib_root=ib, net_root=net)} == {OK}
    bad = site(env={"NCCL_IB_HCA": "mlx5_0:1,mlx5_9:1", "NCCL_SOCKET_IFNAME": "bond0"})
    checks = check_network(bad, here=True, ib_root=ib, net_root=net)
    assert [c.status for c in checks] == [FAIL, FAIL]
    assert "mlx5_9" in checks[0].detail and "bond0" in checks[1].detail
    # From a login node that is not a compute node the same names are only worth a warning.
    assert {c.status for c in check_network(bad, here=False, ib_root=ib, net_root=net)} == {WARN}
    # No InfiniBand here at all: not checked, said so.
    none = check_network(site(env={"NCCL_IB_HCA": "mlx5"}), here=False, ib_root=tmp_path / "no", net_root=net)
    assert none[0].status == WARN and "not checked" in none[0].detail
    # A RoCE setting on an Ethernet site is pointed out; an exclude list names nothing to find.
    roce = check_network(site(env={"NCCL_IB_GID_INDEX": "3", "NCCL_SOCKET_IFNAME": "^docker,lo"},
                              network={"inter_node": "Ethernet"}), here=True, ib_root=ib, net_root=net)
    assert roce[0].status == WARN and "RoCE" in roce[0].detail
