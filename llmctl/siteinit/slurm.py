"""SLURM's side of `llmctl site init`: partitions and node shapes from `scontrol -o`.

`scontrol -a -o show partition` and `scontrol -a -o show node` print one line per
partition or node as `Key=Value` pairs (the machine-readable form; `-a` includes
hidden partitions), and `scontrol show config` names the cluster. Nodes are matched
to partitions by each node's `Partitions=` list, so no host list is expanded.
"""

from __future__ import annotations

import re
from typing import Optional

from llmctl.siteinit.model import Cluster, ClusterPartition, NodeShape

# What `site init` runs, by the file name its output is recorded under (`--from DIR`).
COMMANDS: dict[str, list[str]] = {
    "scontrol_show_config.txt": ["scontrol", "show", "config"],
    "scontrol_show_partition.txt": ["scontrol", "-a", "-o", "show", "partition"],
    "scontrol_show_node.txt": ["scontrol", "-a", "-o", "show", "node"],
}

# `Key=` starts a field; a value runs to the next ` Key=` (values may hold spaces: OS=, Reason=).
_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9_:.]*)=(.*?)(?=\s+[A-Za-z][A-Za-z0-9_:.]*=|\s*$)")
_GRES = re.compile(r"^gpu(?::([^:(,]+))?:(\d+)")


def fields(line: str) -> dict[str, str]:
    """One `scontrol -o` line as a dict (the first key wins when a key repeats)."""
    out: dict[str, str] = {}
    for m in _FIELD.finditer(line.strip()):
        out.setdefault(m.group(1), m.group(2).strip())
    return out


def records(text: str) -> list[dict[str, str]]:
    return [fields(line) for line in text.splitlines() if "=" in line]


def gres_gpus(gres: str) -> tuple[int, Optional[str]]:
    """GPUs in a node's `Gres=`: (count, type); type None when untyped or mixed.

    `gpu:h100:8(S:0-1)`, `gpu:8`, `gpu:a100:4,gpu:v100:2`, `gpu:h100:8,mps:400`, `(null)`.
    """
    count, types = 0, set()
    for item in gres.split(","):
        m = _GRES.match(item.strip())
        if m:
            count += int(m.group(2))
            types.add(m.group(1))
    return count, (types.pop() if len(types) == 1 else None)


def slurm_time(text: str) -> Optional[int]:
    """`[D-]HH:MM:SS` (or MM:SS) to seconds; None for UNLIMITED, INFINITE, NONE, N/A."""
    t = text.strip().upper()
    if t in ("", "UNLIMITED", "INFINITE", "NONE", "N/A", "(NULL)"):
        return None
    days, _, hms = t.rpartition("-")
    parts = [int(p) for p in hms.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts[-3:]
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


def _int(text: Optional[str]) -> Optional[int]:
    return int(text) if text and text.isdigit() else None


def parse(config: str, partitions: str, nodes: str) -> Cluster:
    """The cluster as `scontrol` describes it (the three outputs of COMMANDS, in order)."""
    conf = {}
    for line in config.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            conf[key.strip()] = value.strip()
    by_partition: dict[str, list[tuple[str, NodeShape]]] = {}
    for node in records(nodes):
        name = node.get("NodeName", "?")
        gpus, gtype = gres_gpus(node.get("Gres", ""))
        features = node.get("AvailableFeatures", "")
        shape = NodeShape(
            cpus=_int(node.get("CPUTot")) or _int(node.get("CPUEfctv")) or 1,
            memory_mb=_int(node.get("RealMemory")) or 0,
            gpus=gpus, gpu_type=gtype,
            features=tuple(f for f in features.split(",") if f and f != "(null)"))
        host = node.get("NodeHostName") or name
        for p in node.get("Partitions", "").split(","):
            if p:
                by_partition.setdefault(p, []).append((host, shape))
    out: dict[str, ClusterPartition] = {}
    for part in records(partitions):
        name = part.get("PartitionName")
        if not name:
            continue
        members = by_partition.get(name, [])
        out[name] = ClusterPartition(
            name=name,
            nodes=_int(part.get("TotalNodes")) or len(members),
            shapes=[s for _, s in members],
            hosts=sorted({h for h, _ in members}),
            node_list=part.get("Nodes", ""),
            max_nodes=_int(part.get("MaxNodes")),
            max_time_s=slurm_time(part.get("MaxTime", "UNLIMITED")),
            default_time_s=slurm_time(part.get("DefaultTime", "NONE")),
            default=part.get("Default", "NO").upper() == "YES",
            state=part.get("State", "UP").upper(),
            hidden=part.get("Hidden", "NO").upper() == "YES",
        )
    return Cluster(scheduler="slurm", name=conf.get("ClusterName") or "slurm",
                   version=conf.get("SLURM_VERSION", ""), partitions=out)
