"""Assemble a hardware profile: from this node's readings, from a site's node shape, or from many nodes.

`assemble` is pure (readings in, profile data out), so tests feed it the recorded
H100 node; `probe_node` gathers the readings of this machine; `from_site` builds
the cluster profile of a site-config partition; `merge_nodes` joins the profiles
of every node of an allocation and says where nodes differ. `write_profile`
validates through `HardwareProfile` and writes atomically, TOML or JSON.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from llmctl import __version__
from llmctl.errors import ConfigError, LlmctlError
from llmctl.hw import accelerators, cpu, infiniband, links, netif, nvml, smi

REPLAY_ENV = "LLMCTL_NVML_REPLAY"


# --- one node ----------------------------------------------------------------------

def assemble(gpu: Optional[dict[str, Any]], cpu_info: dict[str, Any], memory_gb: Optional[float],
             ib_ports: list[dict[str, Any]], interfaces: list[dict[str, Any]], *,
             hostname: Optional[str] = None, gpu_source: str = "none", gpu_note: Optional[str] = None,
             tools: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Profile data (not yet validated) from the readings of one node."""
    devices = list((gpu or {}).get("devices", []))
    notes: list[str] = []
    limits: dict[str, Any] = {}
    accel = None
    if devices:
        accel, limits, intra, gpu_notes = _gpu_limits(devices)
        notes += gpu_notes
    else:
        intra = "none"
        flops = cpu.estimate_peak_flops(cpu_info)
        limits = {"estimated_flops": flops, "source": "estimate"} if flops else {"source": "unknown"}
        notes.append(f"CPU-only profile: {gpu_note or 'no NVIDIA GPU found'}. estimated_flops is a rough "
                     "fp32 estimate from the CPU's vector ISA; `llmctl hw benchmark` measures it")
    fabric = infiniband.fabric_name(ib_ports)
    ib_bw = infiniband.active_bandwidth_gbps(ib_ports)
    if fabric:
        inter = fabric
        limits["inter_node_bw_gbps"] = ib_bw
    else:
        up = [i for i in interfaces if i.get("state") == "up" and i.get("kind") == "ether"]
        inter = "Ethernet" if up else "none"
        speeds = [i["speed_mbps"] for i in up if i.get("speed_mbps")]
        if speeds:
            limits["inter_node_bw_gbps"] = round(max(speeds) / 8000, 2)
    node = {k: v for k, v in cpu_info.items() if k != "max_mhz"}
    node.update(hostname=hostname, memory_gb=memory_gb)
    data: dict[str, Any] = {
        "gpu": {"count": len(devices), "devices": devices,
                "driver": (gpu or {}).get("driver"), "cuda_driver": (gpu or {}).get("cuda_driver"),
                "nvml": (gpu or {}).get("nvml"), "topology": (gpu or {}).get("topology") or []},
        "interconnect": {"intra_node": intra, "inter_node": inter},
        "limits": limits,
        "accelerator": accel,
        "node": node,
        "network": {"infiniband": ib_ports, "interfaces": interfaces},
        "probe": {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "gpu_source": gpu_source, "tools": tools or {}},
        "notes": notes,
    }
    return _drop_none(data)


def _gpu_limits(devices: list[dict[str, Any]]) -> tuple[Optional[dict], dict, str, list[str]]:
    """([accelerator], [limits], intra-node link name, notes) for a node's GPUs."""
    notes = []
    names = sorted({d["name"] for d in devices})
    specs = {n: accelerators.lookup(n) for n in names}
    if len(names) > 1:
        notes.append(f"mixed GPU models on one node: {', '.join(names)}; limits use the slowest")
    unknown = [n for n, s in specs.items() if s is None]
    count = len(devices)
    has_nvlink = any(d.get("nvlinks") for d in devices)
    if unknown:
        accel = {"known": False, "name": unknown[0]}
        limits: dict[str, Any] = {"source": "unknown"}
        notes.append(f"GPU {unknown[0]!r} is not in llmctl's accelerator table: its peak FLOP/s is unknown; "
                     "pass --peak-tflops to `llmctl plan`, or run `llmctl hw benchmark`")
        spec = None
    else:
        spec = min(specs.values(), key=lambda s: s.training_tflops)
        accel = spec.to_profile()
        limits = {"estimated_flops": spec.training_tflops * 1e12 * count,
                  "memory_bw_gbps": spec.memory_bw_gbps * count, "source": "datasheet"}
    if has_nvlink:
        intra = "NVLink"
        fewest = min((d.get("nvlinks", []) for d in devices), key=len)
        measured_links = links.nvlink_gbps([x.get("version") for x in fewest]) if fewest else None
        table = spec.nvlink_bw_gbps if spec else None
        # The links that are really up bound what the datasheet promises (a dead link halves nothing
        # on paper, but does on the wire).
        limits["intra_node_bw_gbps"] = min(x for x in (table, measured_links) if x) if (table or measured_links) \
            else None
    else:
        intra = "PCIe"
        pcie = [links.pcie_gbps(d.get("pcie_gen"), d.get("pcie_width")) for d in devices]
        pcie = [p for p in pcie if p]
        limits["intra_node_bw_gbps"] = min(pcie) if pcie else None
    return accel, limits, intra, notes


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _version(pkg: str) -> Optional[str]:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def read_gpus(lib: Any = None) -> tuple[Optional[dict], str, Optional[str], dict[str, str]]:
    """(GPU readings or None, source, note, raw texts) — NVML first, then nvidia-smi."""
    raw: dict[str, str] = {}
    if lib is None and os.environ.get(REPLAY_ENV):
        from llmctl.hw.recorded import RecordedNvml

        path = os.environ[REPLAY_ENV]
        if not Path(path).is_file():
            raise LlmctlError(f"{REPLAY_ENV}={path}: recording not found")
        lib = RecordedNvml(path)
    try:
        gpu = nvml.read(lib)
        raw["nvml.json"] = json.dumps(gpu.pop("raw"), indent=1)
        return gpu, "nvml", None, raw
    except nvml.NvmlUnavailable as e:
        note = str(e)
    if lib is None:
        xml = smi.run("-q", "-x")
        if xml:
            raw["nvidia-smi-q.xml"] = xml
            gpu = smi.parse_query_xml(xml)
            topo = smi.run("topo", "-m")
            if topo:
                raw["nvidia-smi-topo.txt"] = topo
                gpu["topology"] = smi.parse_topo(topo)
            if gpu["devices"]:
                return gpu, "nvidia-smi", None, raw
    return None, "none", note, raw


def probe_node(lib: Any = None, *, ib_root: str = infiniband.SYSFS,
               net_root: str = netif.SYSFS) -> tuple[dict[str, Any], dict[str, str]]:
    """(profile data of this machine, raw outputs by file name). Never imports torch."""
    gpu, source, note, raw = read_gpus(lib)
    cpu_info, lscpu_text = cpu.read_cpu()
    if lscpu_text:
        raw["lscpu.txt"] = lscpu_text
    try:
        raw["meminfo.txt"] = Path("/proc/meminfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        pass
    ports = infiniband.read_ports(ib_root)
    interfaces = netif.read_interfaces(net_root)
    raw["infiniband.json"] = json.dumps(ports, indent=1)
    raw["interfaces.json"] = json.dumps(interfaces, indent=1)
    tools = {"llmctl": __version__, "python": platform.python_version()}
    for pkg in ("nvidia-ml-py", "torch"):
        v = _version(pkg)
        if v:
            tools[pkg] = v
    if gpu and gpu.get("driver"):
        tools["nvidia-driver"] = gpu["driver"]
    if lscpu_text:
        tools["lscpu"] = "util-linux"
    data = assemble(gpu, cpu_info, cpu.read_memory_gb(), ports, interfaces, hostname=socket.gethostname(),
                    gpu_source=source, gpu_note=note, tools=tools)
    return data, raw


# --- clusters ----------------------------------------------------------------------

def with_nodes(data: dict[str, Any], nodes: int) -> dict[str, Any]:
    """The probed node, `nodes` times over."""
    data = dict(data)
    data["cluster"] = {**data.get("cluster", {}), "nodes": nodes}
    return data


def from_site(site_cfg: Any, site_path: Path, partition: Optional[str], nodes: Optional[int],
              probed: dict[str, Any]) -> dict[str, Any]:
    """The cluster profile of a site-config partition's node shape, `nodes` nodes of it.

    A `local` site is this machine, so the probed node stands for its shape. The
    inter-node bandwidth comes from the site; failing that, from the IB ports this
    probe saw (a compute node's probe; on a login node there are usually none).
    """
    name = partition or site_cfg.default_partition
    if name not in site_cfg.partitions:
        raise ConfigError(str(site_path), [f"partitions: no partition {name!r}; partitions: "
                                           f"{', '.join(site_cfg.partitions)}"])
    part = site_cfg.partitions[name]
    n = nodes or 1
    # A profile describes hardware, not a job: planning more nodes than one job may ask for
    # (max_nodes), or than the partition has, is a normal question, so it is a note, not an error
    # (`plan compute --site` takes any count too; job submission enforces the limit).
    size_notes = []
    if part.max_nodes and n > part.max_nodes:
        size_notes.append(f"--nodes {n} is more than the {part.max_nodes} node(s) one job may use "
                          f"(partitions.{name}.max_nodes): a profile for planning, not one job")
    if n > part.nodes:
        size_notes.append(f"--nodes {n} is more than the {part.nodes} node(s) partition {name} has "
                          f"(partitions.{name}.nodes): a hypothetical cluster of this node shape")
    cluster = {"nodes": n, "site": site_cfg.name, "partition": name}
    net = site_cfg.network
    probed_ib = probed.get("limits", {}).get("inter_node_bw_gbps") \
        if probed.get("interconnect", {}).get("inter_node") in ("InfiniBand", "RoCE") else None
    if site_cfg.scheduler == "local":
        data = dict(probed)
        data["cluster"] = cluster
        data["notes"] = list(data.get("notes", [])) + size_notes
        return data
    notes: list[str] = [f"node shape from site-config {site_cfg.name} ({site_path}), partition {name}",
                        *size_notes]
    limits: dict[str, Any] = {}
    accel = None
    devices: list[dict[str, Any]] = []
    if part.gpus_per_node:
        model = part.gpu_model or "unknown GPU"
        spec = accelerators.lookup(model)
        if spec is None:
            accel = {"known": False, "name": model}
            limits["source"] = "unknown"
            notes.append(f"GPU {model!r} (partitions.{name}.gpu_model) is not in llmctl's accelerator table: "
                         "pass --peak-tflops to `llmctl plan`")
        else:
            accel = spec.to_profile()
            limits.update(estimated_flops=spec.training_tflops * 1e12 * part.gpus_per_node,
                          memory_bw_gbps=spec.memory_bw_gbps * part.gpus_per_node, source="site")
            devices = [{"id": 0, "name": model, "memory_gb": spec.memory_gb}]
        intra = net.intra_node or ("NVLink" if spec and spec.nvlink_bw_gbps else "PCIe")
        if intra == "NVLink" and spec and spec.nvlink_bw_gbps:
            limits["intra_node_bw_gbps"] = spec.nvlink_bw_gbps
    else:
        intra = "none"
        limits["source"] = "unknown"
        notes.append(f"partition {name} has no GPUs; run `llmctl hw benchmark` on one of its nodes "
                     "for its FLOP/s")
    inter_bw = net.inter_node_bw_gbps or probed_ib
    if inter_bw:
        limits["inter_node_bw_gbps"] = inter_bw
        if not net.inter_node_bw_gbps:
            notes.append("inter-node bandwidth from this node's InfiniBand ports (the site does not say)")
    elif n > 1:
        notes.append("inter-node bandwidth unknown: set network.inter_node_bw_gbps in the site-config")
    return _drop_none({
        "gpu": {"count": part.gpus_per_node, "devices": devices},
        "interconnect": {"intra_node": intra, "inter_node": net.inter_node},
        "limits": limits,
        "accelerator": accel,
        "node": {"cpus": part.cpus_per_node, "memory_gb": part.memory_gb},
        "cluster": cluster,
        "probe": {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "gpu_source": "site",
                  "tools": {"llmctl": __version__}},
        "notes": notes,
    })


# Facts that must agree across the nodes of one allocation.
_COMPARED = (("gpu count", lambda d: d.get("gpu", {}).get("count")),
             ("GPU models", lambda d: sorted({x["name"] for x in d.get("gpu", {}).get("devices", [])})),
             ("GPU driver", lambda d: d.get("gpu", {}).get("driver")),
             ("GPU links", lambda d: d.get("gpu", {}).get("topology")),
             ("CPU model", lambda d: d.get("node", {}).get("cpu_model")),
             ("CPUs", lambda d: d.get("node", {}).get("cpus")),
             ("memory GB", lambda d: round(d.get("node", {}).get("memory_gb") or 0)),
             ("inter-node network", lambda d: (d.get("interconnect", {}).get("inter_node"),
                                               d.get("limits", {}).get("inter_node_bw_gbps"))))


def merge_nodes(profiles: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """(one cluster profile, differences) from the profiles of every node of an allocation.

    The node with the fewest GPUs (then the lowest inter-node bandwidth) stands for
    all: the planner must not count on what only some nodes have.
    """
    if not profiles:
        raise LlmctlError("no node answered the probe")

    def weakness(d: dict) -> tuple:
        return (d.get("gpu", {}).get("count", 0), d.get("limits", {}).get("inter_node_bw_gbps") or 0)

    base = min(profiles, key=weakness)
    host = lambda d: d.get("node", {}).get("hostname", "?")  # noqa: E731
    diffs = []
    for label, get in _COMPARED:
        values: dict[str, list[str]] = {}
        for d in profiles:
            values.setdefault(json.dumps(get(d)), []).append(host(d))
        if len(values) > 1:
            parts = "; ".join(f"{', '.join(h)}: {json.loads(v)}" for v, h in values.items())
            diffs.append(f"nodes differ in {label}: {parts}")
    merged = dict(base)
    merged["cluster"] = {"nodes": len(profiles), "hostnames": sorted(host(d) for d in profiles)}
    merged["notes"] = list(base.get("notes", [])) + diffs + (
        [f"profile of {host(base)} stands for all nodes"] if diffs else [])
    return merged, diffs


# --- output --------------------------------------------------------------------------

def validate(data: dict[str, Any], name: str = "hardware profile") -> Any:
    """Validate as `HardwareProfile` (a failure here is a bug in the probe, named as such)."""
    from llmctl.config.base import validate_data
    from llmctl.config.hardware import HardwareProfile

    return validate_data(data, HardwareProfile, name)


def render(profile: Any, fmt: str) -> str:
    """The profile as TOML (with a header comment) or JSON."""
    data = profile.to_data()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    import tomli_w

    host = profile.node.hostname or "?"
    head = (f"# Hardware profile written by llmctl {__version__} (`llmctl hw probe`) on {host} at "
            f"{profile.probe.timestamp or '?'}.\n# The planner prefers [measured] over [limits]; "
            "see docs/hardware.md.\n")
    return head + tomli_w.dumps(data)


def format_for(path: Optional[str], fmt: Optional[str]) -> str:
    """--format wins; else the suffix of --emit; else TOML."""
    if fmt:
        return fmt
    return "json" if path and path.lower().endswith(".json") else "toml"


def check_writable(path: str | os.PathLike) -> None:
    """Fail before any work when `path` cannot be written (no half-done runs, no partial files)."""
    p = Path(path)
    if p.is_dir():
        raise LlmctlError(f"cannot write {p}: it is a folder")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise LlmctlError(f"cannot write {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LlmctlError(f"cannot write {p}: {parent} is not writable")


def raw_dir_for(path: str | os.PathLike) -> Path:
    """`configs/hw/local.toml` -> `configs/hw/local.raw/`: the raw outputs of `--verbose`."""
    p = Path(path)
    return p.with_name(p.stem + ".raw")


def write_profile(data: dict[str, Any], path: str | os.PathLike, fmt: str,
                  raw: Optional[dict[str, str]] = None) -> Any:
    """Validate and write atomically (raw outputs first, into `<stem>.raw/`); returns the model."""
    from llmctl.fsutil import atomic_write_text

    if raw:
        d = raw_dir_for(path)
        for name, text in raw.items():
            atomic_write_text(d / name, text)
        data = {**data, "probe": {**data.get("probe", {}), "raw_dir": str(d)}}
    profile = validate(data)
    atomic_write_text(path, render(profile, fmt))
    return profile


def summary(profile: Any) -> str:
    """One paragraph for the terminal."""
    g, n, lim = profile.gpu, profile.node, profile.limits
    if g.count:
        names = sorted({d.name for d in g.devices}) or ["?"]
        gpus = f"{g.count}x {', '.join(names)}"
        if g.driver:
            gpus += f" (driver {g.driver})"
    else:
        gpus = "no GPU"
    flops = f"{lim.estimated_flops / 1e12:.1f} TFLOP/s ({lim.source})" if lim.estimated_flops else \
        "peak FLOP/s unknown"
    lines = [f"{n.hostname or 'node'}: {gpus}; {n.cpus or '?'} CPUs, {n.numa_nodes or '?'} NUMA node(s), "
             f"{n.memory_gb or '?'} GB; intra-node {profile.interconnect.intra_node}, inter-node "
             f"{profile.interconnect.inter_node}; {flops}"]
    if profile.cluster.nodes > 1:
        lines.append(f"cluster: {profile.cluster.nodes} nodes"
                     + (f" of {profile.cluster.site}/{profile.cluster.partition}" if profile.cluster.site else ""))
    lines += [f"note: {x}" for x in profile.notes]
    return "\n".join(lines)


def python_cmd() -> list[str]:
    """How to run this llmctl in another process (same interpreter)."""
    return [sys.executable, "-m", "llmctl"]
