"""The job spec: everything a template needs, resolved, validated and saved.

A JobSpec holds no defaults of its own that a template could disagree with: the
resolver (`llmctl.jobs.resolve`) fills every field from the site-config, the plan
and the command line, and the run folder keeps it as `spec.json`. Rendering the
same spec twice gives the same bytes.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from llmctl.config.base import StrictModel, check_env_names

KINDS = ("train", "eval", "serve-batch", "serve-persistent")
Kind = Literal["train", "eval", "serve-batch", "serve-persistent"]
Backend = Literal["local", "slurm", "pbs", "mpi", "k8s"]



class ContainerSpec(StrictModel):
    """How each rank is wrapped in a container (runtime 'none': not at all)."""

    runtime: Literal["none", "apptainer", "singularity", "pyxis", "bubblewrap", "kubernetes"] = "none"
    image: Optional[str] = None
    mounts: list[str] = []

    def binds(self) -> list[tuple[str, str, bool]]:
        """The mounts as (SRC, DST, read-only), each after the one that holds it (bwrap binds in order)."""
        from llmctl.config.site import parse_mount

        return sorted((parse_mount(m) for m in self.mounts), key=lambda m: (m[1].count("/"), m[1]))


class KubernetesSpec(StrictModel):
    """Kubernetes settings copied from the site-config."""

    namespace: str
    job_kind: Literal["indexed-job", "pytorchjob", "jobset"]
    gpu_resource: str
    service_account: Optional[str] = None
    image_pull_secret: Optional[str] = None
    pvc: Optional[str] = None
    mount_path: str
    """Where the PVC (and so the run folder) is mounted in each pod."""
    node_selector: dict[str, str] = {}


class JobSpec(StrictModel):
    """One job, resolved: resources, environment, launcher and program."""

    version: int = 1
    name: str = Field(min_length=1)
    """Job name (any text: it is quoted wherever it lands)."""
    kind: Kind
    backend: Backend
    site: str
    """Site-config name it was resolved against."""
    site_file: str = ""
    """The site-config file it was resolved against (pre-flight reads it again at submit)."""
    run_dir: str
    """Absolute path of the run folder on the host (logs, checkpoints, the script)."""
    job_run_dir: str = ""
    """The run folder as the job's program sees it (through the site's mounts; "" = run_dir)."""
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    reservation: Optional[str] = None
    inputs: dict[str, str] = {}
    """Host paths the job reads (what -> path): checked at submit (pre-flight)."""
    sources: dict[str, str] = {}
    """Where partition, time, account, qos, reservation and mail came from: flag, project or
    user file (with its path), or site."""
    overrides: dict[str, Any] = {}
    """Site-config fields changed for this job with --set (key path -> value); pre-flight
    applies them again when it reads the site-config at submit."""
    nodes: int = Field(gt=0)
    ranks_per_node: int = Field(gt=0)
    """Processes per node (one per GPU, or CPU ranks where the node has no GPUs)."""
    gpus_per_node: int = Field(ge=0)
    """GPUs requested per node (0: none requested)."""
    gpu_request: Literal["gres", "gpus-per-node", "none"]
    gpu_type: Optional[str] = None
    cpus_per_task: int = Field(gt=0)
    cpu_bind: Optional[str] = None
    """srun `--cpu-bind` for each task (None: not given)."""
    gpu_bind: Optional[str] = None
    """srun `--gpu-bind` for each rank's task (None: not given; only with one task per GPU)."""
    cpus_per_node: int = Field(gt=0)
    mem_gb: int = Field(ge=0)
    """Memory per node in GB (0 with exclusive: the whole node)."""
    time_limit: str
    """Normalized D-HH:MM:SS or HH:MM:SS."""
    time_limit_s: int = Field(gt=0)
    exclusive: bool = False
    constraint: Optional[str] = None
    mail_user: Optional[str] = None
    mail_types: list[str] = []
    array: int = Field(0, ge=0)
    """Array tasks (0: not an array); task i reads configs/<i>.toml."""
    array_parallel: Optional[int] = Field(None, gt=0)
    after: list[str] = []
    """Dependencies, each 'TYPE:ID[:ID...]' with TYPE after, afterok, afternotok or afterany
    (SLURM's names; a bare id on the command line means afterok). All must hold."""
    after_run_dirs: dict[str, str] = {}
    """Local and MPI: the run folder of each job in `after` (where its exit status lands)."""
    requeue: bool = False
    signal_grace_s: int = Field(0, ge=0)
    """Seconds to checkpoint before the kill (0: none asked): SLURM sends USR1 this long
    before the time limit; Kubernetes waits this long after SIGTERM."""
    pbs_dialect: Literal["pbspro", "torque"] = "pbspro"
    launcher: Literal["srun", "torchrun", "mpirun", "single"]
    """How ranks start: srun task per rank, torchrun per node, mpirun, or one process."""
    mpirun: str = "mpirun"
    mpirun_args: list[str] = []
    max_restarts: int = Field(0, ge=0)
    """torchrun's --max-restarts (elastic restarts in the same allocation); 0: none."""
    master_port: Optional[int] = Field(None, ge=1, le=65535)
    """Kubernetes: the rendezvous port (the headless Service's). Elsewhere None: the script
    derives one per job (20000 + job id % 20000; local and MPI jobs: from the wrapper's pid),
    so that two jobs sharing a node never collide."""
    modules: list[str] = []
    module_purge: bool = False
    setup: list[str] = []
    """Admin-reviewed shell lines from the site-config (not quoted, by design)."""
    container: ContainerSpec = ContainerSpec()
    env: dict[str, str] = {}
    """Exported before launch: the site's env (and debug_env with --debug-env), then the job's."""
    extra_directives: list[str] = []
    python: str
    """Interpreter on the compute nodes."""
    program: list[str] = Field(min_length=1)
    """Arguments after the interpreter, e.g. ['-m', 'llmctl.train', '--run-dir', R]."""
    kubernetes: Optional[KubernetesSpec] = None
    command: str = ""
    """The llmctl command that made this spec (shown in the script header)."""

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env_names(v)

    @property
    def ranks(self) -> int:
        """World size."""
        return self.nodes * self.ranks_per_node
