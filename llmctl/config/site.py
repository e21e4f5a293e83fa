"""Site-config: one TOML per cluster, kept by the site's admins.

It says how to ask the cluster for resources (scheduler, partitions and their node
shape, account, QoS, GPU request syntax), what to load (modules, container), which
environment to set (NCCL and InfiniBand settings), and where the shared
filesystems are. Job rendering reads it; `llmctl site check` validates it.
"""

from __future__ import annotations

import posixpath
import re
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from llmctl.config.base import StrictModel, check_env_names

# A site's name names its file (`--site NAME` finds NAME.toml): a plain file name.
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Kubernetes object names, as apimachinery validates them (k8s.io/apimachinery/pkg/util/validation):
# a DNS-1123 label for namespaces, a DNS-1123 subdomain for service accounts, secrets and
# PersistentVolumeClaims, a qualified name for label keys and extended resources.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def dns1123_label(value: str) -> str:
    """A namespace name: at most 63 lowercase letters, digits and '-', alphanumeric at both ends."""
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise ValueError(f"{value!r} is not a DNS-1123 label: at most 63 lowercase letters, digits "
                         "and '-', starting and ending with a letter or digit (e.g. 'llm-training')")
    return value


def dns1123_subdomain(value: str) -> str:
    """A service account, secret or PVC name: DNS-1123 labels joined by '.', at most 253 characters."""
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{value!r} is not a DNS-1123 subdomain: at most 253 lowercase letters, digits, "
                         "'-' and '.', starting and ending with a letter or digit (e.g. 'llm-shared')")
    return value


def qualified_name(value: str, need_prefix: bool = False) -> str:
    """A label key or resource name: [PREFIX/]NAME, PREFIX a DNS-1123 subdomain, NAME at most 63."""
    prefix, slash, name = value.partition("/") if "/" in value else ("", "", value)
    ok = len(name) <= 63 and bool(_QUALIFIED_NAME.fullmatch(name))
    if slash:
        ok = ok and len(prefix) <= 253 and bool(_DNS1123_SUBDOMAIN.fullmatch(prefix))
    elif need_prefix:
        ok = False
    if not ok:
        form = "PREFIX/NAME" if need_prefix else "[PREFIX/]NAME"
        raise ValueError(f"{value!r} is not a Kubernetes qualified name ({form}: PREFIX a DNS-1123 subdomain, "
                         "NAME at most 63 letters, digits, '-', '_' and '.', alphanumeric at both ends, "
                         "e.g. 'nvidia.com/gpu')")
    return value


def label_value(value: str) -> str:
    """A label value: empty, or at most 63 letters, digits, '-', '_' and '.', alphanumeric at both ends."""
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        raise ValueError(f"{value!r} is not a Kubernetes label value: at most 63 letters, digits, '-', '_' "
                         "and '.', starting and ending with a letter or digit")
    return value


_BIND = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?::[A-Za-z0-9_,x-]+)*")

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")


def parse_time_limit(text: str) -> int:
    """SLURM-style time limit to seconds: 'MM', 'HH:MM:SS', 'D-HH', 'D-HH:MM:SS'.

    Raises ValueError with the accepted forms when `text` is none of them.
    """
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"time limit {text!r} is not MM, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif b is None:  # MM
        total = int(a) * 60
    elif c is None:  # MM:SS
        total = int(a) * 60 + int(b)
    else:  # HH:MM:SS
        total = int(a) * 3600 + int(b) * 60 + int(c)
    if total <= 0:
        raise ValueError(f"time limit {text!r} must be positive")
    return total


class Partition(StrictModel):
    """A partition (SLURM) or queue (PBS) and the shape of its nodes."""

    nodes: int = Field(1, gt=0)
    """Nodes in the partition."""
    max_nodes: Optional[int] = Field(None, gt=0)
    """Most nodes one job may ask for (default: all of them)."""
    gpus_per_node: int = Field(0, ge=0)
    """GPUs on each node."""
    gpu_model: Optional[str] = None
    """GPU model as NVML names it, e.g. `NVIDIA H100 80GB HBM3` (looked up in the accelerator table)."""
    gpu_type: Optional[str] = None
    """GRES type to request, e.g. `a100` in `--gres=gpu:a100:8` (omit for untyped GRES)."""
    cpus_per_node: int = Field(1, gt=0)
    """CPU cores on each node."""
    memory_gb: float = Field(gt=0)
    """Host memory on each node in GB."""
    max_time: str = "24:00:00"
    """Longest time limit a job may ask for."""
    default_time: Optional[str] = None
    """Time limit used when the job does not say (default: max_time)."""
    constraint: Optional[str] = None
    """Node feature constraint added to every job (`--constraint`)."""
    exclusive: bool = False
    """Ask for whole nodes (`--exclusive`)."""

    @field_validator("max_time", "default_time")
    @classmethod
    def _time(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            parse_time_limit(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> "Partition":
        if self.max_nodes is not None and self.max_nodes > self.nodes:
            raise ValueError(f"max_nodes ({self.max_nodes}) exceeds nodes ({self.nodes})")
        if self.default_time and parse_time_limit(self.default_time) > parse_time_limit(self.max_time):
            raise ValueError(f"default_time {self.default_time} exceeds max_time {self.max_time}")
        if self.gpu_model and not self.gpus_per_node:
            raise ValueError("gpu_model is set but gpus_per_node is 0")
        return self


def parse_mount(text: str) -> tuple[str, str, bool]:
    """`SRC:DST[:ro]` -> (SRC, DST, read-only); both absolute, normalized."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError(f"mount {text!r} is not SRC:DST or SRC:DST:ro")
    src, dst = parts[0], parts[1]
    for p in (src, dst):
        if not p.startswith("/"):
            raise ValueError(f"mount {text!r}: {p!r} is not an absolute path")
    return posixpath.normpath(src), posixpath.normpath(dst), len(parts) == 3 and parts[2] == "ro"


# bubblewrap: where the sandbox mounts the image folder (its own prefix, like /usr in an
# image), and the host paths every sandbox has besides its mounts. /etc is not there:
# only the files a networked program needs, as apptainer binds them.
BWRAP_IMAGE_DIR = "/opt/llmctl"
BWRAP_SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/proc", "/dev", "/tmp", "/etc")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class Container(StrictModel):
    """Run the job inside a container."""

    runtime: Literal["none", "apptainer", "singularity", "pyxis", "bubblewrap", "kubernetes"] = "none"
    """apptainer/singularity (`exec --nv`), pyxis (`srun --container-image`), bubblewrap (`bwrap`:
    each rank sees the system's /usr, /proc, /dev, an empty /tmp, the image and the mounts, nothing
    else), or kubernetes."""
    image: Optional[str] = None
    """Image: a .sif path, a registry reference, or a squashfs file. bubblewrap: a folder (absolute
    path on every node) holding llmctl and its Python, mounted read-only at `/opt/llmctl`
    (`scripts/bwrap-prefix.sh` builds one)."""
    mounts: list[str] = []
    """Bind mounts as `SRC:DST` (or `SRC:DST:ro`), absolute paths: SRC on the login and compute
    nodes (a shared filesystem), DST inside the container. Only paths under a SRC are visible to
    the job; llmctl maps each path the job uses from SRC to DST and refuses any other. Kubernetes:
    one mount, SRC where the PVC's filesystem is on the login node, DST where pods mount the PVC."""
    python: Optional[str] = None
    """Python inside the image, with llmctl importable (e.g. `/usr/bin/python3`; bubblewrap:
    `/opt/llmctl/bin/python`); required with a runtime."""

    @model_validator(mode="after")
    def _check(self) -> "Container":
        if self.runtime != "none" and not self.image:
            raise ValueError(f"runtime {self.runtime!r} needs an image")
        if self.runtime != "none" and not self.python:
            raise ValueError(f"runtime {self.runtime!r} needs python: the interpreter inside the image "
                             "(the login node's is not in the container)")
        for m in self.mounts:
            parse_mount(m)
        if self.runtime == "bubblewrap":
            self._check_bubblewrap()
        return self

    def _check_bubblewrap(self) -> None:
        if not self.image.startswith("/"):
            raise ValueError(f"image {self.image!r}: with bubblewrap the image is a folder, "
                             "by absolute path on every node")
        if not (self.python.startswith("/") and any(_under(posixpath.normpath(self.python), r)
                                                    for r in (BWRAP_IMAGE_DIR, "/usr"))):
            raise ValueError(f"python {self.python!r} is not inside the sandbox: give the interpreter as it "
                             f"is there, under {BWRAP_IMAGE_DIR} (the image) or /usr, "
                             f"e.g. '{BWRAP_IMAGE_DIR}/bin/python'")
        for m in self.mounts:
            dst = parse_mount(m)[1]
            taken = "/" if dst == "/" else next((r for r in (BWRAP_IMAGE_DIR, *BWRAP_SYSTEM) if _under(dst, r)), None)
            if taken:
                raise ValueError(f"mount {m!r}: {taken} is the sandbox's own (system folders, the image); "
                                 "mount it at another path, e.g. /workspace")


class Network(StrictModel):
    """The inter-node network."""

    inter_node: str = "none"
    """`InfiniBand`, `RoCE`, `Ethernet`, or `none` for a single node."""
    inter_node_bw_gbps: Optional[float] = Field(None, gt=0)
    """Network link rate per node in GB/s (gigabytes per second, not gigabits), one direction: the sum of its InfiniBand/RoCE ports, e.g. 4 × HDR200 (200 Gb/s each) = 100. The same as a hardware profile's `limits.inter_node_bw_gbps`."""
    intra_node: Optional[str] = None
    """GPU-to-GPU link inside a node, e.g. `NVLink`, `PCIe`."""


class Filesystems(StrictModel):
    """Shared filesystems, as seen from every node."""

    home: Optional[str] = None
    """Home directories."""
    shared: Optional[str] = None
    """Shared project space (code, configs)."""
    scratch: Optional[str] = None
    """Fast scratch for data and checkpoints."""
    checkpoints: Optional[str] = None
    """Default root for checkpoints (default: the run folder)."""
    extra: list[str] = []
    """Other filesystems every node sees at the same path (e.g. `/datasets`)."""

    @field_validator("home", "shared", "scratch", "checkpoints")
    @classmethod
    def _absolute(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"{v!r} is not an absolute path")
        return v

    @field_validator("extra")
    @classmethod
    def _absolute_all(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/"):
                raise ValueError(f"{p!r} is not an absolute path")
        return v


class Mail(StrictModel):
    """Scheduler mail."""

    user: str
    """Address to mail."""
    types: list[Literal["BEGIN", "END", "FAIL", "REQUEUE", "ALL", "TIME_LIMIT"]] = ["FAIL"]
    """Events that send mail."""


class Kubernetes(StrictModel):
    """Kubernetes settings (scheduler = 'k8s')."""

    namespace: str = "default"
    """Namespace the job runs in (a DNS-1123 label)."""
    job_kind: Literal["indexed-job", "pytorchjob", "jobset"] = "indexed-job"
    """An indexed batch/v1 Job (one pod per node), a Kubeflow PyTorchJob, or a JobSet."""
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource name for GPUs (a qualified name, `DOMAIN/NAME`)."""
    service_account: Optional[str] = None
    """Service account for the pods (a DNS-1123 subdomain)."""
    image_pull_secret: Optional[str] = None
    """Secret to pull the image (a DNS-1123 subdomain)."""
    pvc: Optional[str] = None
    """PersistentVolumeClaim mounted at the shared path (a DNS-1123 subdomain)."""
    node_selector: dict[str, str] = {}
    """Node labels the pods must match (Kubernetes label keys and values)."""
    reserved_cpus: Optional[int] = Field(None, ge=0)
    """CPUs per node the kubelet does not allocate to pods (system-reserved, kube-reserved,
    daemonsets): a pod asks for its GPUs' share of the rest (default: 4, at most a tenth of the node)."""
    reserved_memory_gb: Optional[float] = Field(None, ge=0)
    """Memory per node (GB) the kubelet does not allocate to pods (default: 32, at most a tenth)."""

    def reserved(self, cpus: int, memory_gb: float) -> tuple[int, float]:
        """(CPUs, GB) a node of this shape keeps from pods."""
        rc = self.reserved_cpus if self.reserved_cpus is not None else min(4, cpus // 10)
        rm = self.reserved_memory_gb if self.reserved_memory_gb is not None else min(32.0, memory_gb / 10)
        return rc, rm

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return dns1123_label(v)

    @field_validator("service_account", "image_pull_secret", "pvc")
    @classmethod
    def _object_names(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else dns1123_subdomain(v)

    @field_validator("gpu_resource")
    @classmethod
    def _resource(cls, v: str) -> str:
        return qualified_name(v, need_prefix=True)

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            qualified_name(key)
            label_value(value)
        return v


class SiteConfig(StrictModel):
    """A cluster: how to ask it for resources and what to run on it."""

    name: str = Field(min_length=1)
    """Short name, used by `--site NAME` (and the file's name): letters, digits, `.`, `_` and `-`."""
    description: str = ""
    """One line for `llmctl site list`."""
    scheduler: Literal["slurm", "pbs", "mpi", "local", "k8s"]
    """Batch system: slurm, pbs, mpi (mpirun over a hostfile), local (this machine), k8s."""
    pbs_dialect: Literal["pbspro", "torque"] = "pbspro"
    """PBS only: PBS Pro (`-l select=`) or Torque (`-l nodes=:ppn=`)."""
    default_partition: str
    """Partition used when a job names none."""
    partitions: dict[str, Partition] = Field(min_length=1)
    """Partitions (SLURM) or queues (PBS) by name."""
    account: Optional[str] = None
    """Account to charge (`--account` / `-A`)."""
    qos: Optional[str] = None
    """Quality of service (`--qos`)."""
    gpu_request: Literal["gres", "gpus-per-node", "none"] = "gres"
    """How GPUs are requested: `--gres=gpu:N`, `--gpus-per-node=N`, or not at all."""
    launcher: Literal["srun", "torchrun", "mpirun"] = "srun"
    """How ranks start inside the allocation: one srun task per GPU, one torchrun per node, or mpirun."""
    cpu_bind: str = "cores"
    """srun tasks (launcher 'srun'): `--cpu-bind` value, e.g. `cores`, `sockets`, `map_ldom:0,1`;
    `none` leaves placement to the OS. Each rank is pinned to its `--cpus-per-task` cores."""
    gpu_bind: str = "single:1"
    """srun tasks on GPU nodes: `--gpu-bind` value; `single:1` gives each rank the one GPU
    closest to its cores (it then sees it as device 0), `closest`, `map_gpu:0,1,...`, or `none`
    (every rank sees all the node's GPUs and takes the one its LOCAL_RANK names)."""
    mpirun: str = "mpirun"
    """MPI launcher (launcher = 'mpirun'); a full path avoids SLURM's `mpiexec` wrapper."""
    mpirun_args: list[str] = []
    """Extra mpirun arguments, e.g. `["--allow-run-as-root", "-x", "NCCL_IB_HCA"]` for Open MPI."""
    serve_mpirun_args: list[str] = ["-disable-auto-cleanup"]
    """Extra mpirun arguments for a server on several ranks (`serve launch --nodes/--gpus-per-node`,
    which always starts its ranks with mpirun): they must keep the other ranks running when one
    dies, so that rank 0 can say so on /health. MPICH's hydra: `-disable-auto-cleanup` (the
    default); Open MPI: `--enable-recovery`."""
    max_restarts: int = Field(0, ge=0, le=100)
    """torchrun's elastic restarts (`--max-restarts`) of a training job's workers: after a rank
    crashes, every worker is restarted in the same allocation and resumes from the last
    checkpoint, without a requeue. Only where torchrun starts the ranks (launcher 'torchrun',
    or a local job); a training job whose ranks start otherwise (srun tasks, mpirun, one process)
    is refused. Across nodes the job also exports TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1."""
    python: Optional[str] = None
    """Python on the compute nodes, with llmctl importable: a venv or conda env on a shared
    filesystem (`/shared/envs/llmctl/bin/python`), or a name the `modules`/`setup` lines put on
    PATH. Required for batch schedulers without a container (the login node's interpreter is
    not on the compute nodes); scheduler 'local'/'mpi' default to the one running llmctl."""
    modules: list[str] = []
    """Environment modules to `module load`, in order."""
    module_purge: bool = False
    """Run `module purge` before loading."""
    setup: list[str] = []
    """Extra shell lines run before the job (e.g. activating a venv). Reviewed by admins: not quoted."""
    container: Container = Container()
    """Container runtime and image."""
    env: dict[str, str] = {}
    """Environment for every job (e.g. NCCL_IB_HCA, NCCL_SOCKET_IFNAME)."""
    debug_env: dict[str, str] = {}
    """Environment added only with `--debug-env` (e.g. NCCL_DEBUG=INFO)."""
    extra_directives: list[str] = []
    """Extra scheduler directives, e.g. `--reservation=llm` (each becomes one #SBATCH/#PBS line)."""
    network: Network = Network()
    """Inter-node network."""
    filesystems: Filesystems = Filesystems()
    """Shared filesystems."""
    mail: Optional[Mail] = None
    """Scheduler mail settings."""
    requeue_grace_s: int = Field(120, ge=0)
    """Seconds between the preemption signal and the kill: the time to checkpoint."""
    kubernetes: Optional[Kubernetes] = None
    """Kubernetes settings (scheduler = 'k8s')."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _SITE_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a site name: it names the file NAME.toml, so use at most 64 "
                             "letters, digits, '.', '_' and '-', starting with a letter or digit")
        return v

    @field_validator("cpu_bind", "gpu_bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        # One srun option value: keywords, lists and masks; nothing a shell would read.
        if not _BIND.fullmatch(v):
            raise ValueError(f"{v!r} is not an srun binding: use e.g. 'cores', 'none', 'single:1', "
                             "'map_gpu:0,1' (letters, digits, '_', ':', ',' and '-')")
        return v

    @field_validator("env", "debug_env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env_names(v)

    @model_validator(mode="after")
    def _check(self) -> "SiteConfig":
        if self.default_partition not in self.partitions:
            raise ValueError(
                f"default_partition {self.default_partition!r} is not one of the partitions: "
                f"{', '.join(self.partitions)}")
        if self.container.runtime == "pyxis" and self.scheduler != "slurm":
            raise ValueError("container.runtime 'pyxis' works only with scheduler 'slurm'")
        if (self.container.runtime == "kubernetes") != (self.scheduler == "k8s"):
            raise ValueError("container.runtime 'kubernetes' goes with scheduler 'k8s' and only with it")
        if self.scheduler == "k8s" and self.kubernetes is None:
            self.kubernetes = Kubernetes()
        if self.scheduler == "k8s":
            for pname, p in self.partitions.items():
                rc, rm = self.kubernetes.reserved(p.cpus_per_node, p.memory_gb)
                if p.cpus_per_node <= rc or p.memory_gb <= rm:
                    raise ValueError(f"partitions.{pname}: kubernetes.reserved_cpus/reserved_memory_gb leave "
                                     "nothing for pods on its nodes")
        if self.scheduler == "k8s" and self.kubernetes.pvc and len(self.container.mounts) != 1:
            raise ValueError("kubernetes.pvc needs exactly one container.mounts entry, "
                             "'SRC:DST': SRC where its filesystem is on the login node, DST where pods mount it")
        if self.container.runtime != "none" and self.python:
            raise ValueError("python is the interpreter without a container; with a container, "
                             "set container.python (the interpreter inside the image)")
        fabric = self.network.inter_node.lower()
        if fabric in ("infiniband", "ib") and "NCCL_IB_GID_INDEX" in {**self.env, **self.debug_env}:
            raise ValueError("env.NCCL_IB_GID_INDEX is a RoCE setting (the GID of a RoCE v2 address); "
                             "on native InfiniBand (network.inter_node) NCCL finds the port by LID: remove it")
        if fabric == "roce" and "NCCL_IB_GID_INDEX" not in self.env:
            raise ValueError("network.inter_node is RoCE but env.NCCL_IB_GID_INDEX is not set: NCCL needs the "
                             "GID index of the RoCE v2 address (`show_gids` lists it; often 3)")
        has_gpus = any(p.gpus_per_node for p in self.partitions.values())
        if has_gpus and self.gpu_request == "none" and self.scheduler in ("slurm", "pbs"):
            raise ValueError("partitions have GPUs but gpu_request is 'none'; use 'gres' or 'gpus-per-node'")
        return self

    def job_python(self) -> Optional[str]:
        """The interpreter the job runs: the container's, else the site's (None: not said)."""
        return self.container.python if self.container.runtime != "none" else self.python

    def job_mounts(self) -> Optional[list[tuple[str, str, bool]]]:
        """How host paths appear inside the job, as (SRC, DST, read-only); None: all of them, as they are.

        A container sees only its mounts. Without one, a batch job sees the shared
        filesystems the site declares (`[filesystems]`) at the same paths; a site that
        declares none, or runs jobs on this machine, is taken to share every path.
        """
        if self.container.runtime != "none":
            return [parse_mount(m) for m in self.container.mounts]
        if self.scheduler in ("local", "mpi"):
            return None
        fs = self.filesystems
        roots = [p for p in (fs.home, fs.shared, fs.scratch, fs.checkpoints, *fs.extra) if p]
        if not roots:
            return None
        return [(posixpath.normpath(r), posixpath.normpath(r), False) for r in dict.fromkeys(roots)]

    def partition(self, name: Optional[str] = None) -> Partition:
        """The named partition, or the default one."""
        return self.partitions[name or self.default_partition]
