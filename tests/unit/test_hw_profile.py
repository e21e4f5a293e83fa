"""Assembling profiles: the recorded H100 node, the synthetic 8-GPU board, CPU-only, sites, merges."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES, REPO
from llmctl.config.base import load_config
from llmctl.config.hardware import HardwareProfile
from llmctl.errors import ConfigError
from llmctl.hw import accelerators, cpu, infiniband, links, netif, nvml
from llmctl.hw import profile as hwp
from llmctl.hw.recorded import RecordedNvml
from llmctl.sites import load_site

H100 = FIXTURES / "hw" / "h100-x1"
HGX = REPO / "tests" / "fixtures" / "hw" / "hgx-h100x8-synthetic.json"


def node_of(recording, **kw) -> dict:
    gpu = nvml.read(RecordedNvml(recording))
    gpu.pop("raw")
    info = cpu.parse_lscpu((H100 / "lscpu.txt").read_text())
    mem = cpu.parse_free_b((H100 / "free-b.txt").read_text())
    return hwp.assemble(gpu, info, mem, [], [], hostname="h100-node", gpu_source="nvml", **kw)


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_recorded_h100_profile(tmp_path, fmt):
    path = tmp_path / f"h100.{fmt}"
    hwp.write_profile(node_of(H100 / "pynvml.json"), path, fmt)
    p = load_config(path, HardwareProfile)
    (d,) = p.gpu.devices
    assert p.gpu.count == 1
    assert (d.name, d.memory_mib, d.compute_capability) == ("NVIDIA H100 80GB HBM3", 81559, "9.0")
    assert (d.pcie_gen, d.pcie_width, d.power_limit_w) == (5, 16, 700)
    assert d.nvlinks == [] and p.interconnect.intra_node == "PCIe"
    assert p.gpu.driver == "580.159.04"
    assert (p.node.cpus, p.node.numa_nodes, p.node.sockets) == (16, 1, 1)
    assert p.node.memory_gb == pytest.approx(135.1, abs=0.1)
    # H100 SXM5 datasheet: 989.4 dense bf16 TFLOP/s, 3.35 TB/s; PCIe 5.0 x16 is ~63 GB/s each way
    assert p.limits.estimated_flops == pytest.approx(989.4e12)
    assert p.limits.memory_bw_gbps == pytest.approx(3350)
    assert p.limits.intra_node_bw_gbps == pytest.approx(63.0, abs=0.5)
    assert p.accelerator.known and "datasheet" in p.accelerator.source.lower()


def test_seed_fields_stay_where_the_seed_put_them(tmp_path):
    import tomllib

    path = tmp_path / "h100.toml"
    hwp.write_profile(node_of(H100 / "pynvml.json"), path, "toml")
    raw = tomllib.loads(path.read_text())
    assert raw["gpu"]["count"] == 1
    assert {"id", "name", "memory_gb"} <= set(raw["gpu"]["devices"][0])
    assert {"intra_node", "inter_node"} <= set(raw["interconnect"])
    assert {"estimated_flops", "memory_bw_gbps"} <= set(raw["limits"])


def test_synthetic_hgx_profile():
    p = hwp.validate(node_of(HGX))
    assert p.gpu.count == 8 and p.interconnect.intra_node == "NVLink"
    assert p.limits.estimated_flops == pytest.approx(8 * 989.4e12)
    assert p.limits.intra_node_bw_gbps == pytest.approx(450)  # 18 NVLink 4 links x 25 GB/s each way
    assert all(cell.startswith("NV") for i, row in enumerate(p.gpu.topology) for j, cell in enumerate(row) if i != j)


def test_unknown_gpu_is_named_unknown():
    data = json.loads((H100 / "pynvml.json").read_text())
    data["devices"][0]["name"] = "NVIDIA Imaginary X1"
    p = hwp.validate(node_of(data))
    assert p.accelerator.known is False and p.accelerator.name == "NVIDIA Imaginary X1"
    assert p.limits.estimated_flops is None and p.limits.source == "unknown"
    assert any("--peak-tflops" in n for n in p.notes)
    assert p.node_flops() is None


def test_cpu_only_profile_has_a_note_and_an_estimate():
    info = cpu.parse_lscpu((H100 / "lscpu.txt").read_text())
    p = hwp.validate(hwp.assemble(None, info, 135.1, [], [], gpu_note="NVML did not start"))
    assert p.gpu.count == 0 and p.interconnect.intra_node == "none"
    assert any(n.startswith("CPU-only profile: NVML did not start") for n in p.notes)
    assert p.limits.source == "estimate" and p.limits.estimated_flops > 0


def test_measured_numbers_win_over_the_datasheet():
    p = hwp.validate({**node_of(H100 / "pynvml.json"),
                      "measured": {"matmul_tflops_bf16": 729.0, "memory_bw_gbps": 2920.0}})
    assert p.node_flops() == pytest.approx(729e12)
    assert p.node_memory_bw_gbps() == pytest.approx(2920)


def test_lscpu_fixture():
    info = cpu.parse_lscpu((H100 / "lscpu.txt").read_text())
    assert info["cpu_model"] == "Intel(R) Xeon(R) Processor"
    assert (info["cpus"], info["sockets"], info["cores_per_socket"], info["numa_nodes"]) == (16, 1, 16, 1)
    assert {"avx512f", "amx_bf16"} <= set(info["cpu_flags"])


def test_meminfo_and_free():
    assert cpu.parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n") == pytest.approx(25.2, abs=0.05)
    assert cpu.parse_free_b((H100 / "free-b.txt").read_text()) == pytest.approx(135.1, abs=0.05)


def _port(root, dev, port, rate, state, layer, numa):
    d = root / dev / "ports" / str(port)
    d.mkdir(parents=True)
    (d / "rate").write_text(rate + "\n")
    (d / "state").write_text(state + "\n")
    (d / "link_layer").write_text(layer + "\n")
    (root / dev / "device").mkdir(exist_ok=True)
    (root / dev / "device" / "numa_node").write_text(f"{numa}\n")


def test_infiniband_ports_from_sysfs(tmp_path):
    _port(tmp_path, "mlx5_0", 1, "400 Gb/sec (4X NDR)", "4: ACTIVE", "InfiniBand", 0)
    _port(tmp_path, "mlx5_1", 1, "400 Gb/sec (4X NDR)", "4: ACTIVE", "InfiniBand", 1)
    _port(tmp_path, "mlx5_2", 1, "10 Gb/sec (4X SDR)", "1: DOWN", "InfiniBand", -1)
    ports = infiniband.read_ports(tmp_path)
    assert [(p["device"], p["state"]) for p in ports] == [("mlx5_0", "ACTIVE"), ("mlx5_1", "ACTIVE"),
                                                          ("mlx5_2", "DOWN")]
    assert ports[1]["numa_node"] == 1 and "numa_node" not in ports[2]
    assert infiniband.active_bandwidth_gbps(ports) == pytest.approx(100.0)  # 2 x NDR400 = 2 x 50 GB/s
    assert infiniband.fabric_name(ports) == "InfiniBand"
    p = hwp.validate(hwp.assemble(None, {"cpus": 2}, 1.0, ports, []))
    assert p.interconnect.inter_node == "InfiniBand" and p.limits.inter_node_bw_gbps == pytest.approx(100.0)


def test_roce_and_no_infiniband(tmp_path):
    _port(tmp_path, "mlx5_0", 1, "200 Gb/sec (4X HDR)", "4: ACTIVE", "Ethernet", 0)
    assert infiniband.fabric_name(infiniband.read_ports(tmp_path)) == "RoCE"
    assert infiniband.read_ports(tmp_path / "absent") == []


def test_interfaces_from_sysfs(tmp_path):
    for name, typ, state, speed in (("lo", "772", "unknown", ""), ("eth0", "1", "up", "25000"),
                                    ("ib0", "32", "up", "-1")):
        d = tmp_path / name
        d.mkdir()
        (d / "type").write_text(typ)
        (d / "operstate").write_text(state)
        (d / "speed").write_text(speed)
        (d / "mtu").write_text("1500")
    got = netif.read_interfaces(tmp_path)
    assert got == [{"name": "eth0", "state": "up", "speed_mbps": 25000, "mtu": 1500, "kind": "ether"},
                   {"name": "ib0", "state": "up", "mtu": 1500, "kind": "infiniband"}]


REQUIRED = {
    "NVIDIA A100-SXM4-40GB": "A100 SXM4 40GB", "NVIDIA A100-SXM4-80GB": "A100 SXM4 80GB",
    "NVIDIA A100-PCIE-40GB": "A100 PCIe 40GB", "NVIDIA A100 80GB PCIe": "A100 PCIe 80GB",
    "NVIDIA H100 80GB HBM3": "H100 SXM5 80GB", "NVIDIA H100 PCIe": "H100 PCIe 80GB",
    "NVIDIA H100 NVL": "H100 NVL 94GB", "NVIDIA H200": "H200 SXM 141GB", "NVIDIA GH200 480GB": "GH200 96GB",
    "NVIDIA B200": "B200", "NVIDIA L40S": "L40S", "NVIDIA L4": "L4", "NVIDIA A10": "A10",
    "Tesla V100-SXM2-32GB": "V100 SXM2", "Tesla V100-PCIE-16GB": "V100 PCIe",
}


@pytest.mark.parametrize("nvml_name,entry", REQUIRED.items())
def test_accelerator_table_knows_the_required_gpus(nvml_name, entry):
    spec = accelerators.lookup(nvml_name)
    assert spec is not None and spec.name == entry
    assert spec.source and spec.memory_bw_gbps > 0 and spec.fp32_tflops > 0


def test_accelerator_table_is_consistent():
    for s in accelerators.TABLE:
        # tensor rates: fp8 doubles bf16 where it exists, tf32 halves it (within the datasheets'
        # rounding: L40S lists 362.05 bf16 and 733 fp8); fp32 is the slowest
        if s.fp8_tflops:
            assert s.fp8_tflops == pytest.approx(2 * s.bf16_tflops, rel=0.02), s.name
        if s.tf32_tflops and s.bf16_tflops:
            assert s.tf32_tflops == pytest.approx(s.bf16_tflops / 2, rel=0.02), s.name
        assert s.fp32_tflops < s.training_tflops, s.name
    assert accelerators.lookup("NVIDIA A100-SXM4-80GB").bf16_tflops == 312  # A100 datasheet, dense
    assert accelerators.lookup("Tesla V100-SXM2-32GB").bf16_tflops is None  # Volta has no bf16 tensor cores
    assert accelerators.lookup("NVIDIA Imaginary X1") is None


def test_every_shipped_site_gpu_is_known():
    from llmctl.resources import data_dir

    for path in sorted(data_dir("site-configs").glob("*.toml")):
        cfg, _ = load_site(str(path))
        for name, part in cfg.partitions.items():
            if part.gpu_model:
                assert accelerators.lookup(part.gpu_model), f"{path.name}: partitions.{name}.gpu_model"


def test_link_rates():
    assert links.pcie_gbps(4, 16) == pytest.approx(31.5, abs=0.1)  # PCIe 4.0 x16 ~ 31.5 GB/s each way
    assert links.pcie_gbps(None, 16) is None
    assert links.nvlink_gbps(["4.0"] * 18) == 450.0 and links.nvlink_gbps([]) is None


def test_cluster_from_site_node_shape():
    cfg, path = load_site("slurm-a100-ib")
    p = hwp.validate(hwp.from_site(cfg, path, None, 4, {}))
    assert (p.cluster.nodes, p.cluster.site, p.cluster.partition) == (4, "slurm-a100-ib", "gpu")
    assert p.gpu.count == 8 and p.gpu.devices[0].name == "NVIDIA A100-SXM4-80GB"
    assert p.limits.estimated_flops == pytest.approx(8 * 312e12)
    assert p.limits.inter_node_bw_gbps == 200.0 and p.interconnect.inter_node == "InfiniBand"
    assert p.limits.intra_node_bw_gbps == 300.0  # NVLink 3: 600 GB/s both ways


def test_cluster_takes_probed_ib_when_the_site_is_silent(tmp_path):
    from llmctl.resources import data_dir

    text = (data_dir("site-configs") / "slurm-a100-ib.toml").read_text()
    text = text.replace("inter_node_bw_gbps = 200.0", "")
    site = tmp_path / "quiet.toml"
    site.write_text(text.replace('name = "slurm-a100-ib"', 'name = "quiet"'))
    cfg, path = load_site(str(site))
    probed = {"interconnect": {"inter_node": "InfiniBand"}, "limits": {"inter_node_bw_gbps": 100.0}}
    p = hwp.validate(hwp.from_site(cfg, path, None, 2, probed))
    assert p.limits.inter_node_bw_gbps == 100.0
    assert any("InfiniBand ports" in n for n in p.notes)


def test_cluster_larger_than_one_job_is_a_note_not_an_error():
    """Issue 17 item 7: planning more nodes than a partition's max_nodes (or than it has) is a normal
    question; `plan compute --site` takes any count, and so does `hw probe --site`."""
    cfg, path = load_site("slurm-a100-ib")
    p = hwp.validate(hwp.from_site(cfg, path, None, 40, {}))
    assert p.cluster.nodes == 40
    assert any("more than the 32 node(s) one job may use" in n for n in p.notes)
    p = hwp.validate(hwp.from_site(cfg, path, None, 2048, {}))
    assert p.cluster.nodes == 2048 and any("64 node(s) partition gpu has" in n for n in p.notes)
    assert not any("one job" in n for n in hwp.validate(hwp.from_site(cfg, path, None, 32, {})).notes)
    with pytest.raises(ConfigError, match="no partition 'nope'"):
        hwp.from_site(cfg, path, "nope", 1, {})


def test_merge_reports_nodes_that_differ():
    a = node_of(HGX)
    b = json.loads(json.dumps(a))
    b["node"]["hostname"] = "gpu-002"
    b["gpu"]["count"] = 7
    b["gpu"]["devices"] = b["gpu"]["devices"][:7]
    b["gpu"]["topology"] = [row[:7] for row in b["gpu"]["topology"][:7]]
    merged, diffs = hwp.merge_nodes([a, b])
    p = hwp.validate(merged)
    assert p.cluster.nodes == 2 and p.cluster.hostnames == ["gpu-002", "h100-node"]
    assert p.gpu.count == 7  # the weaker node stands for all
    assert any("gpu count" in d and "gpu-002: 7" in d for d in diffs)
    same, none = hwp.merge_nodes([a, json.loads(json.dumps(a))])
    assert none == [] and same["cluster"]["nodes"] == 2
