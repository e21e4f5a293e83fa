"""`llmctl site init`: draft a site-config from what the scheduler says about its cluster.

    cluster = inventory("slurm")              # runs scontrol (or reads recorded outputs)
    text = draft(cluster, name="mycluster")   # TOML with comments; validated before it is returned

The draft holds what the scheduler knows (partitions, node counts, CPUs, memory,
GPUs and their GRES type, time limits, the default partition, node features) and
leaves as commented placeholders what it cannot know: the python on the compute
nodes (unless the nodes are this machine), the account, modules, container,
network and filesystems. It always passes `llmctl site check`; `llmctl doctor`
then says what is still missing.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path
from typing import Optional

from llmctl.errors import LlmctlError
from llmctl.siteinit.model import Cluster, ClusterPartition, format_time, gpu_model, memory_gb

SCHEDULERS = ("slurm", "pbs")
# Written for a partition without MaxTime (UNLIMITED): the schema needs a limit.
UNLIMITED = "365-00:00:00"


def _module(scheduler: str):
    from llmctl.siteinit import pbs, slurm

    return {"slurm": slurm, "pbs": pbs}[scheduler]


def detect_scheduler() -> str:
    """slurm when `scontrol` is on PATH, else pbs when `qstat` and `pbsnodes` are.

    SLURM first: `slurm-wlm-torque` installs `qstat`/`pbsnodes` wrappers on SLURM clusters.
    """
    if shutil.which("scontrol"):
        return "slurm"
    if shutil.which("qstat") and shutil.which("pbsnodes"):
        return "pbs"
    raise LlmctlError("no scheduler found: neither `scontrol` (SLURM) nor `qstat`/`pbsnodes` (PBS) "
                      "is on PATH", hint="run it on the cluster's login node, or pass --scheduler "
                                         "and --from DIR with recorded outputs")


def inventory(scheduler: str, from_dir: Optional[str] = None, timeout: float = 60) -> Cluster:
    """Ask the scheduler (or read its recorded outputs from `from_dir`) and parse the answer."""
    from llmctl.schedulers.base import run_command

    mod = _module(scheduler)
    texts = []
    for fname, argv in mod.COMMANDS.items():
        if from_dir:
            p = Path(from_dir) / fname
            try:
                texts.append(p.read_text(encoding="utf-8"))
            except OSError as e:
                raise LlmctlError(f"--from {from_dir}: cannot read {fname} ({e.strerror or e})",
                                  hint=f"record it on the cluster with: {' '.join(argv)} > {fname}") from e
        else:
            texts.append(run_command(argv, f"site init ({scheduler})", timeout=timeout))
    cluster = mod.parse(*texts)
    if not cluster.partitions:
        raise LlmctlError(f"{scheduler}: the scheduler lists no partitions or queues")
    return cluster


def this_host_names() -> set[str]:
    names = {"localhost", "127.0.0.1"}
    for fn in (socket.gethostname, socket.getfqdn):
        try:
            n = fn()
        except OSError:
            continue
        names |= {n, n.split(".")[0]}
    return names


def nodes_are_this_host(cluster: Cluster, partitions: Optional[list[str]] = None) -> bool:
    """Whether every node of these partitions (default: all) is this machine."""
    names = this_host_names()
    hosts = [h for name, p in cluster.partitions.items() if partitions is None or name in partitions
             for h in p.hosts]
    return bool(hosts) and all(h in names or h.split(".")[0] in names for h in hosts)


def site_name(text: str) -> str:
    """A valid site name from a cluster's name (letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:64]
    return name or "cluster"


def _s(value) -> str:
    """A TOML value (strings in TOML's basic-string escapes, which JSON's are a subset of)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name, ensure_ascii=False)


def _partition_lines(p: ClusterPartition, scheduler: str) -> list[str]:
    shape = p.shape()
    lines = [f"[partitions.{_key(p.name)}]"]
    where = f" ({p.node_list})" if p.node_list else ""
    lines.append(f"# {p.nodes} node(s){where}")
    if p.state != "UP":
        lines.append(f"# state {p.state} when drafted: jobs queue but do not start until it is up")
    if p.hidden:
        lines.append("# a hidden partition (sinfo shows it only with -a)")
    mixed = p.mixed()
    if len(mixed) > 1:
        lines.append("# nodes differ; the shape below is what every node has at least:")
        for s, n in mixed:
            gpus = f", {s.gpus} GPU(s)" + (f" {s.gpu_type}" if s.gpu_type else "") if s.gpus else ""
            lines.append(f"#   {n} x {s.cpus} CPUs, {s.memory_mb} MB{gpus}")
    if shape and shape.features:
        lines.append(f"# node features: {','.join(shape.features)} "
                     "(constraint = \"...\" asks for them in every job)")
    lines.append(f"nodes = {p.nodes}")
    if p.max_nodes and p.max_nodes < p.nodes:
        lines.append(f"max_nodes = {p.max_nodes}")
    assert shape is not None
    lines.append(f"gpus_per_node = {shape.gpus}")
    if shape.gpus:
        if shape.gpu_type and scheduler == "slurm":
            lines.append(f"gpu_type = {_s(shape.gpu_type)}")
        model, how = gpu_model(shape.gpu_type)
        if model:
            lines.append(f"gpu_model = {_s(model)}   # {how}")
        else:
            lines.append(f"# gpu_model = \"NVIDIA ...\"   # {how}: set it as `nvidia-smi -L` names it")
    lines.append(f"cpus_per_node = {shape.cpus}")
    unit = "RealMemory" if scheduler == "slurm" else "resources_available.mem"
    lines.append(f"memory_gb = {memory_gb(shape.memory_mb)}   # {unit} {shape.memory_mb} MB; 1 GB = 1024 MB")
    if p.max_time_s:
        lines.append(f"max_time = {_s(format_time(p.max_time_s))}")
    else:
        lines.append(f"max_time = {_s(UNLIMITED)}   # no limit on the cluster: a year stands for it")
    if p.default_time_s and (not p.max_time_s or p.default_time_s <= p.max_time_s):
        lines.append(f"default_time = {_s(format_time(p.default_time_s))}")
    elif not p.max_time_s:
        lines.append("# default_time = \"04:00:00\"   # jobs that say no --time otherwise ask for max_time")
    return lines


def draft(cluster: Cluster, name: Optional[str] = None, python: Optional[str] = None,
          command: str = "llmctl site init") -> str:
    """The site-config's TOML text, validated against the schema (a failure here is a bug)."""
    from llmctl import __version__
    from llmctl.config.base import validate_data
    from llmctl.config.site import SiteConfig

    name = name or site_name(cluster.name)
    usable = {n: p for n, p in cluster.partitions.items() if p.nodes and p.shapes and p.kind != "Route"}
    left = [f"{n} ({'a routing queue' if p.kind == 'Route' else 'no nodes'})"
            for n, p in cluster.partitions.items() if n not in usable]
    if not usable:
        raise LlmctlError(f"{cluster.scheduler} cluster {cluster.name!r}: no partition or queue has nodes",
                          hint="nothing to draft; write the site-config by hand (docs/site-admin.md)")
    default = cluster.default()
    default_note = "the scheduler's default"
    if default not in usable:
        default = next(iter(usable))
        default_note = "no default is marked on the cluster: the first one"
    has_gpus = any(p.shape().gpus for p in usable.values())
    kind = {"slurm": "SLURM", "pbs": "PBS Pro" if cluster.dialect == "pbspro" else "Torque"}[cluster.scheduler]
    version = f" {cluster.version}" if cluster.version else ""
    # The interpreter running llmctl is on the compute nodes only if they are this machine:
    # those of the default partition, where a job goes unless it names another.
    here = nodes_are_this_host(cluster, [default])
    elsewhere = [n for n in usable if not nodes_are_this_host(cluster, [n])]
    out = [f"# Drafted by `{command}` (llmctl {__version__}) from {kind}{version} cluster {cluster.name!r}.",
           "# Review every value and fill in the commented placeholders, then check it:",
           f"#   llmctl site check {name}   and   llmctl doctor --site {name}"]
    if left:
        out.append(f"# Left out: {', '.join(left)}.")
    out += [f"name = {_s(name)}",
            f"description = {_s(f'{kind} cluster {cluster.name}, {len(usable)} partition(s) (drafted by site init)')}",
            f"scheduler = {_s(cluster.scheduler)}"]
    if cluster.scheduler == "pbs":
        out.append(f"pbs_dialect = {_s(cluster.dialect or 'pbspro')}")
    out.append(f"default_partition = {_s(default)}   # {default_note}")
    if has_gpus:
        syntax = "--gres=gpu[:TYPE]:N" if cluster.scheduler == "slurm" else "ngpus=N / gpus=N"
        out.append(f"gpu_request = \"gres\"   # {syntax}")
    else:
        out.append("gpu_request = \"none\"   # no GPUs on the cluster")
    if cluster.scheduler == "slurm":
        out.append("launcher = \"srun\"   # one task per GPU; or \"torchrun\" (one per node), \"mpirun\"")
    else:
        out.append("launcher = \"mpirun\"   # PBS jobs start ranks with mpirun over $PBS_NODEFILE")
        out.append("# mpirun = \"/usr/bin/mpirun\"   # a full path; mpirun_args = [...] for your MPI")
    out.append("")
    out.append("# Python on the compute nodes with llmctl importable: a venv or conda env on a shared")
    out.append("# filesystem, or one `modules` put on PATH (or use a [container] below instead).")
    if python:
        out.append(f"python = {_s(python)}")
    elif here:
        import sys

        out.append(f"python = {_s(sys.executable)}   # this llmctl's: {default}'s nodes are this machine")
        if elsewhere:
            out.append(f"# ... it must be at the same path on the nodes of {', '.join(elsewhere)} too "
                       "(`llmctl doctor` checks the default partition's)")
    else:
        out.append("# python = \"/shared/envs/llmctl/bin/python\"   # REQUIRED: jobs are refused until it is set")
    out += ["# account = \"my-project\"   # --account / -A (users may set their own: --account, user.toml)",
            "# qos = \"normal\"",
            "# modules = [\"cuda/12.4\", \"nccl/2.21.5\"]   # `module load`ed in order",
            "# requeue_grace_s = 120   # seconds from the preemption signal to the kill",
            ""]
    for p in usable.values():
        out += _partition_lines(p, cluster.scheduler)
        out.append("")
    out += ["# [container]   # instead of python: runtime, image (with llmctl), python inside it, mounts",
            "# runtime = \"apptainer\"",
            "# image = \"/shared/containers/llmctl.sif\"",
            "# python = \"/usr/bin/python3\"",
            "# mounts = [\"/shared:/shared\"]",
            "",
            "# [network]   # the planner's inter-node bandwidth; fabric settings go in [env]",
            "# inter_node = \"InfiniBand\"   # or \"RoCE\", \"Ethernet\"",
            "# inter_node_bw_gbps = 200.0   # per node, one direction (8x HDR200 = 200)",
            "# intra_node = \"NVLink\"",
            "",
            "# [env]   # exported in every job",
            "# NCCL_IB_HCA = \"mlx5\"",
            "# NCCL_SOCKET_IFNAME = \"ib0\"",
            "",
            "# [filesystems]   # what every node sees at the same path; run folders must be on one",
            "# home = \"/home\"",
            "# shared = \"/shared\"",
            "# scratch = \"/scratch\""]
    text = "\n".join(out) + "\n"
    import tomllib

    validate_data(tomllib.loads(text), SiteConfig, f"site init draft for {name}")
    return text


def write(text: str, output: str, force: bool = False) -> Path:
    """Write the draft atomically; refuse to replace an existing file unless `force`."""
    from llmctl.fsutil import atomic_write_text

    path = Path(output)
    if path.exists() and not force:
        raise LlmctlError(f"{path} already exists", hint="pass --force to replace it")
    return atomic_write_text(path, text)
