"""PBS's side of `llmctl site init`: queues from `qstat -Q -f`, nodes from `pbsnodes -a`.

Both print blocks: a header line (`Queue: NAME`, or a node's name alone), then
indented `attribute = value` lines; a value too long for one line continues on
lines that start with a tab. `qstat -B -f` gives the server's name and its
`default_queue`. PBS Pro and Torque differ in the node attributes
(`resources_available.ncpus`/`.mem`/`.ngpus` against `np`, `status=...physmem=`,
`gpus`), which also tells the two apart.

Which nodes serve a queue: PBS Pro sites usually tie them with a custom node
resource the queue's `default_chunk` asks for (`default_chunk.Qlist = gpu` and
`resources_available.Qlist = gpu` on the nodes), or with the node's `queue`
attribute; Torque with a node property the queue needs
(`resources_default.neednodes`). A queue with none of these gets every node.
"""

from __future__ import annotations

import re
from typing import Optional

from llmctl.siteinit.model import Cluster, ClusterPartition, NodeShape

COMMANDS: dict[str, list[str]] = {
    "qstat_Bf.txt": ["qstat", "-B", "-f"],
    "qstat_Qf.txt": ["qstat", "-Q", "-f"],
    "pbsnodes_a.txt": ["pbsnodes", "-a"],
}

_UNITS = {"b": 1, "w": 8, "kb": 1024, "kw": 8 * 1024, "mb": 1024**2, "mw": 8 * 1024**2,
          "gb": 1024**3, "gw": 8 * 1024**3, "tb": 1024**4, "tw": 8 * 1024**4}


def blocks(text: str, header: Optional[str] = None) -> list[tuple[str, dict[str, str]]]:
    """(name, attributes) per block. `header` is the prefix of a block's first line
    (`Queue:`, `Server:`); None means an unindented line (pbsnodes)."""
    out: list[tuple[str, dict[str, str]]] = []
    last: Optional[str] = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("\t") and out and last:  # continuation of a long value
            out[-1][1][last] += line.strip()
            continue
        if header is not None and line.startswith(header):
            out.append((line[len(header):].strip(), {}))
            last = None
        elif header is None and not line[0].isspace():
            out.append((line.strip(), {}))
            last = None
        elif out and "=" in line:
            key, _, value = line.partition("=")
            last = key.strip()
            out[-1][1][last] = value.strip()
    return out


def size_mb(text: Optional[str]) -> int:
    """A PBS size (`527831088kb`, `128gb`, `1024`: bytes) in MB; 0 when unreadable."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?[bw])?\s*", (text or "").lower())
    if not m:
        return 0
    return int(m.group(1)) * _UNITS[m.group(2) or "b"] // 1024**2


def walltime(text: Optional[str]) -> Optional[int]:
    """`[[HH:]MM:]SS` (PBS's duration) in seconds; None when unset."""
    if not text:
        return None
    try:
        parts = [float(p) for p in text.strip().split(":")]
    except ValueError:
        return None
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return int(seconds)


def _int(text: Optional[str]) -> Optional[int]:
    return int(text) if text and text.strip().isdigit() else None


def _torque_status(status: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in status.split(",") if "=" in item)


def _node(name: str, a: dict[str, str]) -> tuple[NodeShape, str, set[str], Optional[str]]:
    """(shape, host, the labels queues select it by, its `queue` attribute)."""
    if "np" in a or "status" in a:  # Torque
        status = _torque_status(a.get("status", ""))
        gpu_names = set(re.findall(r"gpu_product_name=([^;]+)", a.get("gpu_status", "")))
        shape = NodeShape(cpus=_int(a.get("np")) or _int(status.get("ncpus")) or 1,
                          memory_mb=size_mb(status.get("physmem")),
                          gpus=_int(a.get("gpus")) or 0,
                          gpu_type=gpu_names.pop() if len(gpu_names) == 1 else None,
                          features=tuple(p for p in a.get("properties", "").split(",") if p))
        return shape, name, set(shape.features), a.get("queue")
    ra = {k.split(".", 1)[1]: v for k, v in a.items() if k.startswith("resources_available.")}
    shape = NodeShape(cpus=_int(ra.get("ncpus")) or _int(a.get("pcpus")) or 1,
                      memory_mb=size_mb(ra.get("mem")),
                      gpus=_int(ra.get("ngpus")) or 0,
                      gpu_type=ra.get("gpu_model") or ra.get("gpu_type"))
    labels = {q.strip() for q in ra.get("Qlist", "").split(",") if q.strip()}
    return shape, ra.get("host") or a.get("Mom", name).split(".")[0], labels, a.get("queue")


def parse(server: str, queues: str, nodes: str) -> Cluster:
    """The cluster as PBS describes it (the three outputs of COMMANDS, in order)."""
    srv = blocks(server, "Server:")
    server_name, server_attrs = srv[0] if srv else ("pbs", {})
    node_list = [(n, *_node(n, a)) for n, a in blocks(nodes)]
    torque = any("np" in a or "status" in a for _, a in blocks(nodes))
    out: dict[str, ClusterPartition] = {}
    for qname, q in blocks(queues, "Queue:"):
        label = q.get("default_chunk.Qlist") or q.get("resources_default.neednodes")
        members = [(host, shape) for _, shape, host, labels, queue in node_list
                   if queue == qname or (queue is None and (label is None or label in labels))]
        # A node tied to one queue by its `queue` attribute serves only that queue.
        up = q.get("enabled", "True").lower() == "true" and q.get("started", "True").lower() == "true"
        out[qname] = ClusterPartition(
            name=qname, nodes=len(members), shapes=[s for _, s in members],
            hosts=sorted({h for h, _ in members}),
            node_list=f"Qlist={label}" if label else "all nodes",
            max_nodes=_int(q.get("resources_max.nodect")) or _int(q.get("resources_max.nodes")),
            max_time_s=walltime(q.get("resources_max.walltime")),
            default_time_s=walltime(q.get("resources_default.walltime")),
            state="UP" if up else "DOWN", kind=q.get("queue_type", "Execution"))
    return Cluster(scheduler="pbs", name=server_name or "pbs",
                   version=server_attrs.get("pbs_version", ""),
                   dialect="torque" if torque else "pbspro",
                   default_partition=server_attrs.get("default_queue"), partitions=out)
