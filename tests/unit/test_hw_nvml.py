"""The NVML reader, replaying the recorded H100 node and a synthetic 8-GPU NVSwitch board."""

from __future__ import annotations

import copy
import json
import shutil

import pynvml
import pytest
from hypothesis import given, strategies as st

from conftest import FIXTURES, REPO
from llmctl.hw import nvml, smi
from llmctl.hw.recorded import RecordedNvml

H100 = FIXTURES / "hw" / "h100-x1"
HGX = REPO / "tests" / "fixtures" / "hw" / "hgx-h100x8-synthetic.json"


@pytest.fixture(scope="module")
def h100():
    return nvml.read(RecordedNvml(H100 / "pynvml.json"))


def test_recorded_h100_node(h100):
    # Expected values as nvidia-smi printed them on that node (nvidia-smi.txt, README).
    (dev,) = h100["devices"]
    assert dev["name"] == "NVIDIA H100 80GB HBM3"
    assert dev["memory_mib"] == 81559
    assert dev["compute_capability"] == "9.0"
    assert (dev["pcie_gen"], dev["pcie_width"]) == (5, 16)
    assert dev["power_limit_w"] == 700
    assert (dev["max_sm_clock_mhz"], dev["max_mem_clock_mhz"]) == (1980, 2619)
    assert dev["uuid"] == "GPU-4c5e811e-d9dd-cb04-cdf7-bef9df22774b"
    assert dev["mig_enabled"] is False
    assert dev["nvlinks"] == []  # every link answered NotSupported: no NVLink
    assert "numa_node" not in dev  # NVML said NotSupported, so the profile does not guess
    assert h100["driver"] == "580.159.04" and h100["cuda_driver"] == "13.0"
    assert h100["topology"] == [["X"]]


def test_nvml_and_nvidia_smi_agree_on_the_recorded_node(h100):
    """Two independent recordings of the same node (NVML readings, `nvidia-smi -q -x`) give the same facts."""
    from_xml = smi.parse_query_xml((H100 / "nvidia-smi-q.xml").read_text())
    assert from_xml["driver"] == h100["driver"] and from_xml["cuda_driver"] == h100["cuda_driver"]
    (x,) = from_xml["devices"]
    (n,) = h100["devices"]
    for key in ("name", "memory_mib", "uuid", "pci_bus_id", "power_limit_w", "max_sm_clock_mhz",
                "max_mem_clock_mhz", "pcie_gen", "pcie_width", "mig_enabled"):
        assert x[key] == n[key], key


def test_topo_m_text_of_the_recorded_node():
    text = (H100 / "nvidia-smi.txt").read_text()
    assert smi.parse_topo(text[text.index("GPU0\tCPU Affinity") - 10:]) == [["X"]]


def test_topo_m_with_nic_columns():
    text = ("\t\x1b[4mGPU0\tGPU1\tNIC0\tCPU Affinity\tNUMA Affinity\x1b[0m\n"
            "GPU0\t X \tNV12\tPXB\t0-63\t0\n"
            "GPU1\tNV12\t X \tSYS\t64-127\t1\n"
            "NIC0\tPXB\tSYS\t X \t\t\n\nLegend:\n  X    = Self\n")
    assert smi.parse_topo(text) == [["X", "NV12"], ["NV12", "X"]]


@pytest.fixture(scope="module")
def hgx():
    return nvml.read(RecordedNvml(HGX))


def test_synthetic_hgx_all_nvlink(hgx):
    devs = hgx["devices"]
    assert [d["id"] for d in devs] == list(range(8))
    for i, row in enumerate(hgx["topology"]):
        assert row[i] == "X"
        # NVLink peers of GPU i: every other GPU, each over the 18 links to the NVSwitches.
        assert [j for j, cell in enumerate(row) if cell == "NV18"] == [j for j in range(8) if j != i]
    for d in devs:
        assert len(d["nvlinks"]) == 18
        assert {x["version"] for x in d["nvlinks"]} == {"4.0"}
        assert {x["peer_type"] for x in d["nvlinks"]} == {"switch"}
        assert d["numa_node"] == (0 if d["id"] < 4 else 1)
    # two sockets of 56 cores with hyper-threads: 0-55 + 112-167, 56-111 + 168-223
    assert devs[0]["cpu_affinity"] == "0-55,112-167"
    assert devs[7]["cpu_affinity"] == "56-111,168-223"


def _direct_pair() -> dict:
    """Two GPUs joined by 4 direct NVLink 3 links (no switch), built from one recorded device."""
    base = json.loads((H100 / "pynvml.json").read_text())
    dev = base["devices"][0]
    buses = ["00000000:07:00.0", "00000000:0F:00.0"]
    devices = []
    for i in range(2):
        d = copy.deepcopy(dev)
        d.update(index=i, pci_bus_id=buses[i], uuid=f"GPU-{i}", topology=[None, 20] if i == 0 else [20, None],
                 p2p_nvlink=[None, 0] if i == 0 else [0, None])
        d["nvlink"] = [{"link": k, "state": 1, "version": 4, "remote_pci": buses[1 - i], "remote_type": 0}
                       for k in range(4)] + [{"link": 4, "state": 0}]
        devices.append(d)
    return {**base, "count": 2, "devices": devices}


def test_direct_links_name_their_peer_gpu():
    r = nvml.read(RecordedNvml(_direct_pair()))
    assert r["topology"] == [["X", "NV4"], ["NV4", "X"]]
    for d, peer in zip(r["devices"], (1, 0)):
        assert [x["peer_id"] for x in d["nvlinks"]] == [peer] * 4
        assert {x["version"] for x in d["nvlinks"]} == {"3.0"}


def test_pcie_only_pair_uses_the_topology_level():
    data = _direct_pair()
    for d in data["devices"]:
        d["nvlink"] = [{"link": 0, "state": "ERR NVMLError_NotSupported: Not Supported"}]
        d["p2p_nvlink"] = [None if x is None else 5 for x in d["p2p_nvlink"]]  # NOT_SUPPORTED
    r = nvml.read(RecordedNvml(data))
    assert r["topology"] == [["X", "PXB"], ["PXB", "X"]]  # NVML_TOPOLOGY_MULTIPLE


def test_stand_in_raises_pynvml_errors():
    lib = RecordedNvml(H100 / "pynvml.json")
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        lib.nvmlDeviceGetCount()
    lib.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        lib.nvmlDeviceGetNumaNodeId(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        lib.nvmlDeviceGetNvLinkState(0, 18)


def test_driver_missing_is_a_clear_unavailable():
    lib = RecordedNvml({"init_error": "ERR NVMLError_DriverNotLoaded: Driver Not Loaded", "devices": []})
    with pytest.raises(nvml.NvmlUnavailable, match="Driver Not Loaded"):
        nvml.read(lib)


def test_real_nvml_here_never_crashes():
    try:
        r = nvml.read()
    except nvml.NvmlUnavailable as e:
        assert "NVML" in str(e) or "nvidia-ml-py" in str(e)
    else:  # a machine with a GPU
        assert r["devices"] and shutil.which("nvidia-smi")


def test_raw_readings_replay_to_the_same_result(hgx):
    again = nvml.read(RecordedNvml(json.loads(json.dumps(hgx["raw"]))))
    assert again["devices"] == hgx["devices"] and again["topology"] == hgx["topology"]


@given(st.sets(st.integers(min_value=0, max_value=255)))
def test_cpu_list_matches_the_bitmask(cpus):
    words = [0] * 4
    for c in cpus:
        words[c // 64] |= 1 << (c % 64)
    text = nvml.cpu_list(words)
    back = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        back |= set(range(int(lo), int(hi or lo) + 1))
    assert back == cpus


def test_the_accelerator_table_and_a_probe_agree_on_capacity(h100):
    """An HBM datasheet's "80GB" is 80 GiB: the table's capacity (bytes / 1e9, as the planner counts)
    is within 0.5% of what NVML reports on the recorded H100 node, so `--site` and a probed
    profile plan the same memory; a GDDR board's capacity stays decimal."""
    from llmctl.hw.accelerators import lookup

    (dev,) = h100["devices"]
    spec = lookup(dev["name"])
    assert dev["memory_gb"] == pytest.approx(85.52, abs=0.01)
    assert spec.memory_gb == pytest.approx(dev["memory_gb"], rel=0.005)
    assert lookup("NVIDIA A100-SXM4-80GB").memory_gb == pytest.approx(81920 * 2**20 / 1e9, abs=0.05)
    assert lookup("NVIDIA L40S").memory_gb == 48.0
