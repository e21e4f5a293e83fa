"""Site-config + plan + job kind + command-line overrides -> one JobSpec.

Precedence, as everywhere in llmctl: command-line flag > job file (plan) >
site-config > defaults. Whatever the site does not allow (a partition it lacks, a
time limit over the partition's maximum, more GPUs or nodes than a node or a job
may have) is refused here, before anything is written or submitted, with a list
of what the site allows.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from llmctl.errors import LlmctlError

# Backends that start processes on this machine work with any site whose
# scheduler is not a batch system; the others need a site of their own kind.
HOST_BACKENDS = {"local": ("local", "mpi"), "mpi": ("local", "mpi")}

# Kinds that run many ranks; the others run one process on one node, except a persistent
# server asked for several ranks (--nodes/--gpus-per-node), whose ranks are MPI ranks.
DISTRIBUTED_KINDS = ("train",)
MPI_KINDS = ("serve-persistent",)
# Kinds that checkpoint on a stop signal (and requeue themselves on USR1).
REQUEUE_KINDS = ("train", "serve-batch")


@dataclass
class JobRequest:
    """What the caller asks for; None means 'take it from the plan or the site'."""

    kind: str
    backend: str
    run_dir: str
    program: list[str]
    name: Optional[str] = None
    partition: Optional[str] = None
    nodes: Optional[int] = None
    gpus_per_node: Optional[int] = None
    time: Optional[str] = None
    after: list[str] = field(default_factory=list)
    array: int = 0
    array_parallel: Optional[int] = None
    debug_env: bool = False
    env: dict[str, str] = field(default_factory=dict)
    python: Optional[str] = None
    command: str = ""
    account: Optional[str] = None
    qos: Optional[str] = None
    reservation: Optional[str] = None
    mail_user: Optional[str] = None
    mail_type: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    """Where each of partition, time, account... came from (flag, project or user file); the rest: the site."""
    paths: dict[str, str] = field(default_factory=dict)
    """Other host paths the job reads (what -> path), checked to be visible inside it."""
    master_port: int = 29500
    overrides: list[str] = field(default_factory=list)
    """--set KEY=VALUE items: job settings are taken by `apply_settings`, site fields by `prepare`."""
    site_overrides: dict[str, Any] = field(default_factory=dict)
    """The site-config fields --set changed (key path -> value), recorded in the spec."""


# Program flags whose value is a file or folder the job reads (pre-flight checks them).
INPUT_FLAGS = ("--checkpoint", "--suite", "--artifact", "--input", "--config")

# --after: SLURM's dependency types that every backend can express (PBS spells them alike).
DEPENDENCY_TYPES = ("after", "afterok", "afternotok", "afterany")
# What a job id looks like on each backend: SLURM 123 or an array task 123_4; PBS
# 123.server (arrays 123[].server); local and MPI jobs: the wrapper's process id.
_JOB_ID = {"slurm": r"[0-9]+(?:_[0-9]+)?",
           "pbs": r"[0-9]+(?:\[[0-9]*\])?(?:\.[A-Za-z0-9][A-Za-z0-9-]*)*",
           "local": r"[0-9]+", "mpi": r"[0-9]+"}
_ID_EXAMPLE = {"slurm": "123 or 123_4", "pbs": "123.server or 123[].server",
               "local": "12345 (from llmctl job list)", "mpi": "12345 (from llmctl job list)"}


def parse_after(values: list[str], backend: str) -> list[str]:
    """--after values as 'TYPE:ID[:ID...]' (a bare id means afterok); anything else is refused.

    The result lands in a scheduler directive (SLURM --dependency, PBS -W depend=),
    so only the forms both share pass: a job id of this backend, or one of
    DEPENDENCY_TYPES followed by colon-separated ids.
    """
    if not values:
        return []
    if backend == "k8s":
        raise LlmctlError(f"--after {' '.join(values)}: Kubernetes jobs cannot wait for other jobs "
                          "(a batch/v1 Job has no dependencies), so --after cannot be honoured",
                          hint="submit this job once the other has finished, or use --launcher slurm/pbs")
    id_re = _JOB_ID[backend]
    ok = re.compile(rf"(?:(?P<type>{'|'.join(DEPENDENCY_TYPES)}):)?(?P<ids>{id_re}(?::{id_re})*)")
    out = []
    for raw in values:
        m = ok.fullmatch(raw.strip())
        if not m:
            raise LlmctlError(
                f"--after {raw!r}: not a {backend} job id or TYPE:ID[:ID...] with TYPE one of "
                f"{', '.join(DEPENDENCY_TYPES)} ({backend} job ids look like {_ID_EXAMPLE[backend]})",
                hint="repeat --after for several dependencies, e.g. --after 123 --after afterany:124:125")
        out.append(f"{m.group('type') or 'afterok'}:{m.group('ids')}")
    return out


def dependency_list(after: list[str]) -> str:
    """The parsed --after values as SLURM's --dependency / PBS's depend= value (all must hold)."""
    return ",".join(after)


def after_jobs(after: list[str]) -> list[tuple[str, str]]:
    """The parsed --after values as (type, job id) pairs, in order."""
    pairs = []
    for dep in after:
        kind, *ids = dep.split(":")
        pairs += [(kind, i) for i in ids]
    return pairs


def local_run_dirs(after: list[str], backend: str) -> dict[str, str]:
    """Local and MPI: the run folder of each job named in --after, from the index of
    submitted jobs (its wrapper writes the exit status there); unknown ids are refused."""
    if backend not in ("local", "mpi") or not after:
        return {}
    from llmctl.schedulers.base import read_index

    known = {e.get("job_id"): e.get("run_dir") for e in read_index() if e.get("backend") in ("local", "mpi")}
    dirs = {}
    for _, job_id in after_jobs(after):
        if not known.get(job_id):
            raise LlmctlError(f"--after {job_id}: not a local or MPI job llmctl started on this machine",
                              hint="`llmctl job list` shows the jobs llmctl knows about "
                                   "(their ids are process ids)")
        dirs[job_id] = known[job_id]
    return dirs


def format_time(seconds: int) -> str:
    """Seconds as SLURM's D-HH:MM:SS (HH:MM:SS under a day)."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    hms = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hms}" if days else hms


def _allowed(site: Any) -> str:
    """One line per partition: what a job may ask of it."""
    lines = []
    for name, p in site.partitions.items():
        gpus = f"{p.gpus_per_node} GPU(s)/node" if p.gpus_per_node else f"{p.cpus_per_node} CPU(s)/node, no GPUs"
        lines.append(f"{name}: up to {p.max_nodes or p.nodes} node(s), {gpus}, max time {p.max_time}")
    return "the site allows: " + "; ".join(lines)


def _launcher(site_launcher: str, backend: str) -> str:
    """How ranks start on `backend`, given the site's preference.

    Off SLURM there is no srun: a local job uses torchrun, PBS and MPI use mpirun
    (one torchrun per node would need pbsdsh), Kubernetes runs torchrun in each pod.
    """
    if backend == "slurm":
        return site_launcher
    if backend == "local":
        return "torchrun" if site_launcher == "srun" else site_launcher
    if backend == "k8s":
        return "torchrun"
    return "mpirun"


def check_backend(site: Any, backend: str) -> None:
    """Refuse a backend the site cannot run (e.g. `--launcher slurm` on a PBS site)."""
    ok = HOST_BACKENDS.get(backend, (backend,))
    if site.scheduler not in ok:
        raise LlmctlError(
            f"site {site.name!r} uses scheduler {site.scheduler!r}; it cannot run a {backend!r} job",
            hint=f"use --launcher {site.scheduler}, or a site whose scheduler is {' or '.join(ok)}")


def resolve(site: Any, req: JobRequest, plan: Any = None) -> Any:
    """Build and validate the JobSpec for `req` on `site` (a SiteConfig)."""
    from llmctl.config.site import parse_time_limit
    from llmctl.jobs.spec import ContainerSpec, JobSpec, KubernetesSpec

    check_backend(site, req.backend)
    after = parse_after(list(req.after), req.backend)
    after_run_dirs = local_run_dirs(after, req.backend)
    where = f"site {site.name!r}"
    pname = req.partition or site.default_partition
    if pname not in site.partitions:
        raise LlmctlError(f"{where}: no partition {pname!r}", hint=_allowed(site))
    part = site.partitions[pname]

    # Size: flags > plan > one node with one rank.
    distributed = req.kind in DISTRIBUTED_KINDS
    plan_nodes = plan.inputs.nodes if (plan is not None and distributed) else 1
    plan_gpn = plan.inputs.gpus_per_node if (plan is not None and distributed) else None
    nodes = req.nodes or plan_nodes
    gpn = req.gpus_per_node if req.gpus_per_node is not None else plan_gpn
    if gpn is None:
        gpn = 1  # one process: on one GPU where the partition has GPUs, else on CPU
    if plan is not None and distributed and nodes * max(gpn, 1) != plan_nodes * plan.inputs.gpus_per_node:
        raise LlmctlError(
            f"{nodes} node(s) x {gpn} GPU(s) = {nodes * max(gpn, 1)} ranks, but the plan is laid out "
            f"for {plan_nodes} x {plan.inputs.gpus_per_node} = {plan_nodes * plan.inputs.gpus_per_node}",
            hint="compute a plan for this size (`llmctl plan compute`), or drop --nodes/--gpus-per-node")
    max_nodes = part.max_nodes or part.nodes
    if nodes > max_nodes:
        raise LlmctlError(f"{where}: {nodes} nodes exceed partition {pname!r}'s limit of {max_nodes}",
                          hint=_allowed(site))
    if part.gpus_per_node:
        if gpn > part.gpus_per_node:
            raise LlmctlError(
                f"{where}: {gpn} GPUs per node, but partition {pname!r} nodes have {part.gpus_per_node}",
                hint=_allowed(site))
        ranks_per_node, gpus = max(gpn, 1), gpn
    else:
        # No GPUs on this partition: the ranks run on CPU cores.
        if gpn > part.cpus_per_node:
            raise LlmctlError(
                f"{where}: {gpn} ranks per node, but partition {pname!r} has no GPUs and "
                f"{part.cpus_per_node} CPU(s) per node", hint=_allowed(site))
        ranks_per_node, gpus = max(gpn, 1), 0

    # Time: flag > partition default > partition maximum.
    max_s = parse_time_limit(part.max_time)
    if req.time:
        try:
            secs = parse_time_limit(req.time)
        except ValueError as e:
            raise LlmctlError(f"--time: {e}") from e
        if secs > max_s:
            raise LlmctlError(f"{where}: time limit {req.time} exceeds partition {pname!r}'s maximum "
                              f"{part.max_time}", hint=_allowed(site))
    else:
        secs = parse_time_limit(part.default_time or part.max_time)

    # A job's share of a node: its GPUs' share of the CPUs and memory (all of them on a
    # partition without GPUs, where the ranks are the CPU users). Only a job that takes
    # whole nodes asks for them exclusively: a 1-GPU job does not hold an 8-GPU node.
    whole_node = gpus == part.gpus_per_node if part.gpus_per_node else True
    per_rank = part.cpus_per_node // (part.gpus_per_node if part.gpus_per_node else ranks_per_node)
    cpus_per_task = max(1, per_rank)
    exclusive = part.exclusive and whole_node
    if exclusive:
        mem = 0
    else:
        share = min(1.0, ranks_per_node * cpus_per_task / part.cpus_per_node)
        mem = max(1, int(part.memory_gb * share))
    if req.backend == "k8s":
        # A pod fits what the kubelet can allocate (capacity less what the site reserves
        # for the system and daemons): its GPUs' share of that, never the node's capacity.
        k = site.kubernetes
        rc, rm = k.reserved(part.cpus_per_node, part.memory_gb)
        pod_share = gpus / part.gpus_per_node if part.gpus_per_node else 1.0
        pod_cpus = max(1, int((part.cpus_per_node - rc) * pod_share))
        cpus_per_task = max(1, pod_cpus // ranks_per_node)
        mem = max(1, int((part.memory_gb - rm) * pod_share))

    env = dict(site.env)
    if req.debug_env:
        env.update(site.debug_env)
    env.update(req.env)

    # One process needs no launcher (and no rendezvous). A server's ranks are MPI ranks
    # (llmctl.serve.tp, llmctl.serve.dp), started by mpirun whatever the site's launcher for training.
    ranks = nodes * ranks_per_node
    mpi_ranks = req.kind in MPI_KINDS and ranks > 1
    if mpi_ranks and req.backend == "k8s":
        raise LlmctlError(f"a server on {ranks} ranks needs MPI, which Kubernetes jobs do not start",
                          hint="serve on one rank per pod (drop --nodes/--gpus-per-node), or use --launcher slurm")
    if distributed and ranks > 1:
        launcher = _launcher(site.launcher, req.backend)
    else:
        launcher = "mpirun" if mpi_ranks else "single"
    if launcher == "mpirun" and site.container.runtime == "pyxis":
        # pyxis puts a rank in its image through srun's --container-image: ranks that
        # mpirun starts would run on the bare host, without the image or its mounts.
        what = f"a server on {ranks} ranks" if mpi_ranks and not distributed else "this job's ranks"
        raise LlmctlError(f"{where}: {what} would start with mpirun, outside the pyxis container "
                          "(pyxis starts containers only through srun)",
                          hint="serve on one rank (drop --nodes/--gpus-per-node)" if mpi_ranks and not distributed
                          else "set launcher = 'srun' or 'torchrun' (--set launcher=srun)")
    mpirun_args = list(site.mpirun_args) + (list(site.serve_mpirun_args) if mpi_ranks else [])
    max_restarts = site.max_restarts if req.kind == "train" else 0
    if max_restarts:
        if launcher != "torchrun" or req.backend == "k8s":
            how = {"srun": "one srun task per rank", "mpirun": "mpirun", "single": "one process, no launcher",
                   "torchrun": "torchrun on Kubernetes, whose Job retries lost pods itself"}[launcher]
            raise LlmctlError(f"{where}: max_restarts = {max_restarts} needs torchrun's elastic agent, "
                              f"and this job's ranks start with {how}",
                              hint="set launcher = 'torchrun' (--set launcher=torchrun) for a job of "
                                   "several ranks, or max_restarts = 0 (--set max_restarts=0)")
        if nodes > 1:
            # A fresh rendezvous store per attempt: with the shared one the restarted workers
            # read the last attempt's gloo addresses and fail to connect (docs/training.md).
            env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    if req.array and req.backend not in ("slurm", "pbs"):
        raise LlmctlError(f"job arrays need a batch scheduler (slurm or pbs), not {req.backend!r}",
                          hint="submit one job per config, or use --launcher slurm/pbs")
    requeue = req.kind in REQUEUE_KINDS and req.backend in ("slurm", "pbs")
    # The time to checkpoint between the stop signal and the kill: SLURM's USR1 lead
    # (--signal), Kubernetes' terminationGracePeriodSeconds after SIGTERM.
    grace = site.requeue_grace_s if (requeue or (req.kind in REQUEUE_KINDS and req.backend == "k8s")) else 0
    k8s = None
    if req.backend == "k8s":
        k = site.kubernetes
        if k.job_kind != "indexed-job":
            raise LlmctlError(f"{where}: kubernetes.job_kind {k.job_kind!r} is not rendered yet",
                              hint="use job_kind = 'indexed-job' (one pod per node)")
        k8s = KubernetesSpec(namespace=k.namespace, job_kind=k.job_kind, gpu_resource=k.gpu_resource,
                             service_account=k.service_account, image_pull_secret=k.image_pull_secret,
                             pvc=k.pvc, node_selector=dict(k.node_selector),
                             mount_path=(site.job_mounts() or [("", site.filesystems.shared or "/workspace", False)])[0][1])
    # Paths: the job sees host paths through the site's mounts (refused if it cannot).
    from llmctl.jobs.paths import PathMap

    pmap = PathMap.for_site(site)
    job_run_dir = pmap.to_job(req.run_dir, "run folder")
    if not pmap.writable(req.run_dir):
        raise LlmctlError(f"run folder {req.run_dir} is on a read-only mount of site {site.name!r}: "
                          f"{pmap.describe()}", hint="choose a --run-dir on a writable filesystem")
    program = pmap.program(list(req.program))
    for what, path in req.paths.items():
        pmap.to_job(path, what)
    # What the job reads, as host paths: pre-flight checks them at submit.
    argv = list(req.program)
    inputs = {argv[i - 1]: a for i, a in enumerate(argv) if i and argv[i - 1] in INPUT_FLAGS and a.startswith("/")}
    inputs.update(req.paths)
    python = req.python or site.job_python()
    if not python:
        if site.scheduler not in ("local", "mpi"):
            raise LlmctlError(
                f"{where} does not say which python runs on its compute nodes "
                "(the login node's interpreter is not there)",
                hint="set `python` (a venv/conda env on a shared filesystem, or one that `modules` "
                     "put on PATH), or `container.python` with a container")
        python = sys.executable  # this machine: the interpreter running llmctl is there
    # Binding (srun only): each task pinned to its cores; with one task per GPU, each
    # rank also bound to its GPU (the trainer then takes device LOCAL_RANK % visible).
    cpu_bind = gpu_bind = None
    if req.backend == "slurm" and launcher in ("srun", "torchrun", "single"):
        cpu_bind = site.cpu_bind
        if launcher == "srun" and gpus and ranks_per_node == gpus:
            gpu_bind = site.gpu_bind
    # Per-user settings (flag > project > user, already merged into req) > site.
    mail_user = req.mail_user or (site.mail.user if site.mail else None)
    mail_types = list(req.mail_type) or (list(site.mail.types) if site.mail else ["FAIL"])
    if req.reservation and req.backend != "slurm":
        raise LlmctlError(f"reservation {req.reservation!r}: only SLURM jobs take --reservation",
                          hint="on PBS a reservation is a queue: pass it as --partition")
    chosen = {"partition": pname, "time": format_time(secs), "account": req.account or site.account,
              "qos": req.qos or site.qos, "reservation": req.reservation, "mail_user": mail_user,
              "mail_type": ",".join(mail_types) if mail_user else None}
    sources = {k: req.sources.get(k, "site" if k != "time" or not req.time else "flag")
               for k, v in chosen.items() if v}
    if not req.time:
        sources["time"] = "site (partition default)" if part.default_time else "site (partition max_time)"
    # Size: flag > plan > one node with one rank (as decided above); for resolved.json.
    req.sources["nodes"] = "flag --nodes" if req.nodes else ("plan" if plan is not None and distributed else "default")
    req.sources["gpus_per_node"] = ("flag --gpus-per-node" if req.gpus_per_node is not None
                                    else "plan" if plan_gpn is not None else "default")
    name = req.name or f"llmctl-{req.kind}"
    return JobSpec(
        name=name, kind=req.kind, backend=req.backend, site=site.name, run_dir=req.run_dir,
        job_run_dir=job_run_dir,
        partition=pname if req.backend in ("slurm", "pbs") else None,
        inputs=inputs, account=chosen["account"], qos=chosen["qos"], reservation=req.reservation, sources=sources,
        nodes=nodes, ranks_per_node=ranks_per_node,
        gpus_per_node=gpus, gpu_request=site.gpu_request if gpus else "none",
        gpu_type=part.gpu_type, cpus_per_task=cpus_per_task, cpu_bind=cpu_bind, gpu_bind=gpu_bind,
        cpus_per_node=part.cpus_per_node,
        mem_gb=mem, time_limit=format_time(secs), time_limit_s=secs, exclusive=exclusive,
        constraint=part.constraint, mail_user=mail_user,
        mail_types=mail_types if mail_user else [], array=req.array,
        array_parallel=req.array_parallel, after=after, after_run_dirs=after_run_dirs, requeue=requeue,
        signal_grace_s=grace, pbs_dialect=site.pbs_dialect,
        launcher=launcher, mpirun=site.mpirun, mpirun_args=mpirun_args, max_restarts=max_restarts,
        master_port=req.master_port if req.backend == "k8s" else None, modules=list(site.modules), module_purge=site.module_purge,
        setup=list(site.setup),
        container=ContainerSpec(runtime=site.container.runtime, image=site.container.image,
                                mounts=list(site.container.mounts)),
        env=env, extra_directives=list(site.extra_directives),
        python=python, program=program,
        kubernetes=k8s, command=req.command, overrides=dict(req.site_overrides),
    )
