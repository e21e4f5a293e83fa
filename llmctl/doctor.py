"""`llmctl doctor`: will jobs run on this site? Every check that needs no job, one line each.

    checks = run_checks("mycluster")   # [Check(name, status, detail, fix), ...]
    status: "ok", "warn" (may be fine; look at it) or "FAIL" (jobs will not run as configured)

What it checks, in order:
  site        the site-config loads and passes `site check` (its warnings become warn lines)
  commands    the scheduler's commands are on PATH (sbatch/squeue/scontrol/sinfo, qsub/qstat,
              mpirun, kubectl) and a container runtime the site names
  partitions  SLURM/PBS: each partition the site lists exists on the cluster, and its node
              shape (nodes, GPUs and their type, CPUs, memory, max time) is not more than the
              cluster's nodes have (a job sized from the site-config would never start)
  submit      SLURM: `sbatch --test-only` accepts a one-node job in each partition with the
              site's account, QoS, GPU request and extra directives (the pre-flight check
              that `job submit` runs on the real script)
  python      the job's interpreter imports llmctl where jobs run: on SLURM a one-task
              `srun` in the default partition (`--immediate`, so a busy cluster is reported
              as not checked rather than waited for), on this machine for local/mpi sites;
              with a container, what would be checked is said, not run
  network     NCCL settings fit the fabric: NCCL_IB_GID_INDEX only with RoCE, NCCL_IB_HCA
              names HCAs in /sys/class/infiniband and NCCL_SOCKET_IFNAME interfaces in
              /sys/class/net (FAIL when the nodes are this machine, warn otherwise)
  filesystems the site's shared filesystems exist here (run folders are written from here)

The CLI exits 2 when any check FAILs (llmctl's exit code for what the user can fix).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError

OK, WARN, FAIL = "ok", "warn", "FAIL"

COMMANDS = {"slurm": ("sbatch", "squeue", "scontrol", "sinfo", "srun"), "pbs": ("qsub", "qstat", "qdel"),
            "k8s": ("kubectl",), "mpi": (), "local": ()}


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def to_data(self) -> dict[str, str]:
        return asdict(self)


def _fmt_time(seconds: Optional[int]) -> str:
    from llmctl.siteinit.model import format_time

    return "no limit" if seconds is None else format_time(seconds)


# --- the checks ------------------------------------------------------------------

def check_site(ref: Optional[str]) -> tuple[list[Check], Any, Optional[Path]]:
    from llmctl.sites import check_site as site_check, load_site

    try:
        report = site_check(ref or "local")
        cfg, path = load_site(ref)
    except LlmctlError as e:
        return [Check("site", FAIL, e.message.replace("\n", " "), e.hint or
                      "fix the site-config (`llmctl site check NAME` lists every problem)")], None, None
    out = [Check("site", OK, f"{report['name']} ({report['path']}): {report['summary']}")]
    out += [Check("site", WARN, w) for w in report["warnings"]]
    return out, cfg, path


def check_commands(cfg: Any) -> list[Check]:
    out = []
    tools = list(COMMANDS.get(cfg.scheduler, ()))
    if cfg.scheduler == "mpi" or cfg.launcher == "mpirun":
        tools.append(cfg.mpirun)
    if not tools:
        return [Check("commands", OK, f"scheduler {cfg.scheduler!r}: jobs run on this machine, no commands needed")]
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        out.append(Check("commands", FAIL, f"not on PATH: {', '.join(missing)}",
                         "run doctor on the cluster's login node, or load the scheduler's module"))
    else:
        out.append(Check("commands", OK, f"on PATH: {', '.join(tools)}"))
    rt = cfg.container.runtime
    if rt in ("apptainer", "singularity") and not shutil.which(rt):
        out.append(Check("commands", WARN, f"container runtime `{rt}` is not on this machine's PATH",
                         "fine if only the compute nodes have it"))
    return out


def check_partitions(cfg: Any, cluster: Any) -> list[Check]:
    """The site's partitions against the cluster's: exists, and asks no more than nodes have."""
    from llmctl.config.site import parse_time_limit
    from llmctl.siteinit.model import memory_gb

    out = []
    for name, p in cfg.partitions.items():
        cp = cluster.partitions.get(name)
        if cp is None:
            out.append(Check("partitions", FAIL,
                             f"partition {name!r} is not on the cluster (it has {', '.join(cluster.partitions)})",
                             f"remove partitions.{name} from the site-config or rename it"))
            continue
        shape = cp.shape()
        if shape is None:
            out.append(Check("partitions", FAIL, f"partition {name!r} has no nodes on the cluster",
                             f"remove partitions.{name} or ask the admins"))
            continue
        over, under = [], []
        cluster_mem = memory_gb(shape.memory_mb)

        def compare(label: str, site_v: float, have: float) -> None:
            if site_v > have:
                over.append(f"{label} {site_v} > {have}")
            elif site_v < have:
                under.append(f"{label} {site_v} < {have}")

        compare("nodes", p.nodes, cp.nodes)
        compare("gpus_per_node", p.gpus_per_node, shape.gpus)
        compare("cpus_per_node", p.cpus_per_node, shape.cpus)
        compare("memory_gb", p.memory_gb, cluster_mem)
        if p.max_nodes and cp.max_nodes and p.max_nodes > cp.max_nodes:
            over.append(f"max_nodes {p.max_nodes} > {cp.max_nodes}")
        if cp.max_time_s is not None and parse_time_limit(p.max_time) > cp.max_time_s:
            over.append(f"max_time {p.max_time} > {_fmt_time(cp.max_time_s)}")
        if p.gpu_type and p.gpus_per_node and shape.gpu_type and p.gpu_type != shape.gpu_type:
            over.append(f"gpu_type {p.gpu_type!r} but the nodes have {shape.gpu_type!r}")
        actual = (f"cluster: {cp.nodes} node(s) x {shape.gpus} GPU(s), {shape.cpus} CPUs, {cluster_mem} GB, "
                  f"max time {_fmt_time(cp.max_time_s)}")
        if over:
            out.append(Check("partitions", FAIL, f"{name}: {'; '.join(over)} ({actual})",
                             f"lower partitions.{name} to what its nodes have (`llmctl site init` drafts it)"))
        elif under:
            out.append(Check("partitions", WARN, f"{name}: {'; '.join(under)} ({actual})",
                             "jobs ask for less than the nodes have: fine if on purpose"))
        else:
            out.append(Check("partitions", OK, f"{name}: matches the cluster ({actual})"))
        if cp.state != "UP":
            out.append(Check("partitions", WARN, f"{name}: state {cp.state} on the cluster",
                             "jobs queue but do not start until it is up"))
    return out


def _test_script(cfg: Any, pname: str) -> str:
    from llmctl.config.site import parse_time_limit
    from llmctl.siteinit.model import format_time

    p = cfg.partitions[pname]
    secs = min(600, parse_time_limit(p.default_time or p.max_time))
    lines = ["#!/bin/bash", f"#SBATCH --partition={shlex.quote(pname)}", "#SBATCH --nodes=1",
             "#SBATCH --ntasks=1", f"#SBATCH --time={format_time(secs)}", "#SBATCH --job-name=llmctl-doctor"]
    if cfg.account:
        lines.append(f"#SBATCH --account={shlex.quote(cfg.account)}")
    if cfg.qos:
        lines.append(f"#SBATCH --qos={shlex.quote(cfg.qos)}")
    if p.gpus_per_node and cfg.gpu_request != "none":
        typed = f"{p.gpu_type}:" if p.gpu_type else ""
        flag = "--gres=gpu:" if cfg.gpu_request == "gres" else "--gpus-per-node="
        lines.append(f"#SBATCH {flag}{typed}1")
    if p.constraint:
        lines.append(f"#SBATCH --constraint={shlex.quote(p.constraint)}")
    lines += [f"#SBATCH {d}" for d in cfg.extra_directives]
    return "\n".join(lines + ["true", ""])


def check_submit(cfg: Any) -> list[Check]:
    """`sbatch --test-only` of a one-node job in each partition (jobs/preflight.py's check)."""
    import tempfile

    from llmctl.jobs.preflight import _sbatch_test_only

    out = []
    with tempfile.TemporaryDirectory(prefix="llmctl-doctor-") as tmp:
        for pname in cfg.partitions:
            script = Path(tmp) / f"{pname}.sh"
            script.write_text(_test_script(cfg, pname))
            problems = _sbatch_test_only(script)
            if problems:
                out.append(Check("submit", FAIL, f"{pname}: {problems[0]}",
                                 "fix the partition, account, qos, GPU request or extra_directives"))
            else:
                out.append(Check("submit", OK, f"{pname}: sbatch --test-only accepts a one-node job"))
    return out


def _python_probe(cfg: Any, python: str) -> list[str]:
    """argv that runs the job's python as a job would (modules, setup lines) and imports llmctl."""
    code = "import llmctl, sys; print('llmctl', llmctl.__version__, sys.executable)"
    lines = []
    if cfg.module_purge:
        lines.append("module purge")
    lines += [f"module load {shlex.quote(m)}" for m in cfg.modules]
    lines += list(cfg.setup)
    if not lines:
        return [python, "-c", code]
    return ["bash", "-c", "; ".join(lines + [f"exec {shlex.quote(python)} -c {shlex.quote(code)}"])]


def check_python(cfg: Any, run_job: bool = True, timeout: float = 90) -> list[Check]:
    from llmctl.schedulers.base import try_command

    python = cfg.job_python()
    rt = cfg.container.runtime
    if rt != "none":
        probe = f"{python} -c 'import llmctl'"
        what = {"apptainer": f"apptainer exec {cfg.container.image} {probe}",
                "singularity": f"singularity exec {cfg.container.image} {probe}",
                "pyxis": f"srun --container-image={cfg.container.image} {probe}",
                "kubernetes": f"a pod of {cfg.container.image} running {probe}"}.get(
                    rt, f"{probe} in the {rt} container with image {cfg.container.image}")
        return [Check("python", WARN, f"container site: not checked; would run: {what}",
                      "run that once by hand (or a tiny job) to confirm the image has llmctl")]
    if cfg.scheduler in ("local", "mpi"):
        python = python or sys.executable
        where, argv = "this machine", _python_probe(cfg, python)
        if argv[0] == python and not shutil.which(python):
            return [Check("python", FAIL, f"{python}: not found on this machine (where the jobs run)",
                          "fix `python` in the site-config (or leave it out: the one running llmctl)")]
    elif not python:
        return [Check("python", FAIL, f"site {cfg.name!r} does not say which python runs on its compute nodes",
                      "set `python` (a venv/conda env on a shared filesystem with llmctl installed)")]
    elif cfg.scheduler == "slurm" and run_job and shutil.which("srun"):
        part = cfg.default_partition
        argv = ["srun", "-N1", "-n1", f"--partition={part}", "--time=2", "--immediate=30",
                "--job-name=llmctl-doctor", "--quiet"]
        if cfg.account:
            argv.append(f"--account={cfg.account}")
        if cfg.qos:
            argv.append(f"--qos={cfg.qos}")
        argv += _python_probe(cfg, python)
        where = f"a compute node (srun in {part})"
    else:
        why = "--no-job" if not run_job else f"no way to start a task on a {cfg.scheduler} node from here"
        return [Check("python", WARN, f"{python}: not checked on a compute node ({why})",
                      f"on a compute node: {python} -c 'import llmctl'")]
    r = try_command(argv, timeout=timeout)
    if r is None:
        return [Check("python", WARN, f"{python}: not checked: `{argv[0]}` did not answer in {timeout:.0f} s",
                      "try again when the cluster is less busy")]
    text = (r.stdout + r.stderr).strip().splitlines()
    if r.returncode == 0 and any(line.startswith("llmctl ") for line in text):
        found = next(line for line in text if line.startswith("llmctl "))
        return [Check("python", OK, f"{python} imports llmctl on {where}: {found}")]
    srun_errors = [line for line in text if line.startswith("srun: ")]
    if argv[0] == "srun" and srun_errors and not any("Traceback" in line or "No such file" in line
                                                       or "not found" in line for line in text):
        return [Check("python", WARN, f"{python}: not checked, srun did not run it: {srun_errors[-1]}",
                      "try again when the partition has a free node, or run it in a job")]
    last = text[-1] if text else f"exit {r.returncode}"
    return [Check("python", FAIL, f"{python} on {where}: {last}",
                  "install llmctl into that environment (pip install llmctl), or fix `python` in the site-config")]


def _names(value: str) -> tuple[list[str], bool]:
    """NCCL's interface/HCA list syntax: `^` excludes, `=` means exact names; `:port` suffixes."""
    exact = False
    v = value.strip()
    if v.startswith("^"):
        return [], False  # an exclude list names what must not be used: nothing to find
    if v.startswith("="):
        exact, v = True, v[1:]
    return [n.split(":")[0].strip() for n in v.split(",") if n.strip()], exact


def check_network(cfg: Any, here: bool, ib_root: str | Path = "/sys/class/infiniband",
                  net_root: str | Path = "/sys/class/net") -> list[Check]:
    env = {**cfg.env}
    fabric = cfg.network.inter_node.lower()
    out = []
    bad = FAIL if here else WARN
    where = "this machine (where the jobs run)" if here else "this machine (run doctor on a compute node to be sure)"
    if "NCCL_IB_GID_INDEX" in env and fabric != "roce":
        out.append(Check("network", WARN, f"NCCL_IB_GID_INDEX is set but network.inter_node is "
                         f"{cfg.network.inter_node!r}: it is a RoCE setting", "remove it unless the fabric is RoCE"))
    if fabric in ("infiniband", "ib", "roce") and env.get("NCCL_IB_DISABLE", "0") not in ("0", ""):
        out.append(Check("network", WARN, f"NCCL_IB_DISABLE={env['NCCL_IB_DISABLE']} on a {cfg.network.inter_node} "
                         "site: NCCL will use sockets", "remove it unless on purpose"))
    hca = env.get("NCCL_IB_HCA")
    if hca:
        names, exact = _names(hca)
        root = Path(ib_root)
        devices = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        if names and not devices:
            out.append(Check("network", WARN, f"NCCL_IB_HCA={hca}: not checked, {where} has no "
                             f"{ib_root}", "run doctor on a compute node"))
        elif names:
            missing = [n for n in names if not any(d == n or (not exact and d.startswith(n)) for d in devices)]
            if missing:
                out.append(Check("network", bad, f"NCCL_IB_HCA names {', '.join(missing)}: not among the HCAs "
                                 f"of {where}: {', '.join(devices)}", "fix env.NCCL_IB_HCA"))
            else:
                out.append(Check("network", OK, f"NCCL_IB_HCA={hca}: found in {ib_root}"))
    ifname = env.get("NCCL_SOCKET_IFNAME")
    if ifname:
        names, exact = _names(ifname)
        root = Path(net_root)
        ifaces = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        missing = [n for n in names if not any(i == n or (not exact and i.startswith(n)) for i in ifaces)]
        if missing:
            out.append(Check("network", bad, f"NCCL_SOCKET_IFNAME names {', '.join(missing)}: no such interface "
                             f"on {where} (it has {', '.join(ifaces) or 'none'})", "fix env.NCCL_SOCKET_IFNAME"))
        elif names:
            out.append(Check("network", OK, f"NCCL_SOCKET_IFNAME={ifname}: found in {net_root}"))
    if not out:
        out.append(Check("network", OK, f"inter_node {cfg.network.inter_node!r}; no NCCL interface settings to check"))
    return out


def check_filesystems(cfg: Any) -> list[Check]:
    fs = cfg.filesystems
    roots = [(k, getattr(fs, k)) for k in ("home", "shared", "scratch", "checkpoints") if getattr(fs, k)]
    roots += [("extra", p) for p in fs.extra]
    missing = [f"{k} {p}" for k, p in roots if not os.path.isdir(p)]
    if missing:
        return [Check("filesystems", WARN, f"not on this machine: {', '.join(missing)}",
                      "run folders are written here and must be on a filesystem the nodes share")]
    if roots:
        return [Check("filesystems", OK, f"present here: {', '.join(p for _, p in roots)}")]
    return [Check("filesystems", OK, "none declared: every path is taken as shared")]


def run_checks(site: Optional[str] = None, run_job: bool = True) -> list[Check]:
    """Every check for `site` (None: the default site), in order."""
    from llmctl.siteinit import inventory, nodes_are_this_host

    checks, cfg, _ = check_site(site)
    if cfg is None:
        return checks
    checks += check_commands(cfg)
    here = cfg.scheduler in ("local", "mpi")
    tools_ok = all(shutil.which(t) for t in COMMANDS.get(cfg.scheduler, ()))
    if cfg.scheduler in ("slurm", "pbs"):
        if not tools_ok:
            checks.append(Check("partitions", WARN, f"not checked: the {cfg.scheduler} commands are not here"))
        else:
            try:
                cluster = inventory(cfg.scheduler, timeout=30)
            except LlmctlError as e:
                checks.append(Check("partitions", FAIL, f"cannot ask the scheduler: {e.message}",
                                    "is the scheduler up? (`sinfo` / `qstat -Q`)"))
                cluster = None
            if cluster is not None:
                checks += check_partitions(cfg, cluster)
                here = nodes_are_this_host(cluster, [p for p in cfg.partitions if p in cluster.partitions])
        if cfg.scheduler == "slurm" and tools_ok:
            checks += check_submit(cfg)
    checks += check_python(cfg, run_job=run_job)
    checks += check_network(cfg, here)
    checks += check_filesystems(cfg)
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        line = f"{c.status:<4}  {c.name:<11}  {c.detail}"
        if c.fix and c.status != OK:
            line += f"\n{'':19}-> {c.fix}"
        lines.append(line)
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    lines.append(f"{counts[FAIL]} FAIL, {counts[WARN]} warn, {counts[OK]} ok")
    return "\n".join(lines)
