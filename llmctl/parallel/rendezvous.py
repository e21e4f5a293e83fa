"""One rendezvous layer: rank, local rank and world size from whichever launcher started us.

torchrun sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT. srun sets
SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS and the node list, whose first host is
the master. Open MPI sets OMPI_COMM_WORLD_{RANK,LOCAL_RANK,SIZE}; MPICH and
Intel MPI set PMI_RANK/PMI_SIZE (and MPI_LOCALRANKID). torchrun's variables win
when several are present (torchrun inside an srun step sees both).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from llmctl.errors import LlmctlError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Rendezvous:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    source: str  # torchrun | slurm | openmpi | pmi | single

    def env(self) -> dict[str, str]:
        """The torch.distributed (and DeepSpeed) variables this rendezvous stands for."""
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank),
                "WORLD_SIZE": str(self.world_size), "MASTER_ADDR": self.master_addr,
                "MASTER_PORT": str(self.master_port)}


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    s = nodelist.strip()
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", s)
    if not m or not s:
        raise LlmctlError(f"SLURM node list {nodelist!r}: cannot read its first host")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]  # keeps leading zeros: gpu[003-005] -> gpu003
    return prefix + first


def _int(env: Mapping[str, str], key: str, source: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise LlmctlError(f"{source}: {key}={env[key]!r} is not an integer") from None


def discover(env: Optional[Mapping[str, str]] = None) -> Rendezvous:
    """Read the launcher's environment (os.environ by default)."""
    env = os.environ if env is None else env
    port = _int(env, "MASTER_PORT", "environment") if env.get("MASTER_PORT") else DEFAULT_PORT
    addr = env.get("MASTER_ADDR")
    if "RANK" in env and "WORLD_SIZE" in env:
        return Rendezvous(_int(env, "RANK", "torchrun"), _int(env, "LOCAL_RANK", "torchrun")
                          if "LOCAL_RANK" in env else 0, _int(env, "WORLD_SIZE", "torchrun"),
                          addr or "127.0.0.1", port, "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not addr:
            addr = first_host(nodes) if nodes else "127.0.0.1"
        if not env.get("MASTER_PORT") and env.get("SLURM_JOB_ID", "").isdigit():
            # Two jobs sharing a node must not collide on the port.
            port = 20000 + int(env["SLURM_JOB_ID"]) % 20000
        return Rendezvous(_int(env, "SLURM_PROCID", "SLURM"), _int(env, "SLURM_LOCALID", "SLURM")
                          if "SLURM_LOCALID" in env else 0, _int(env, "SLURM_NTASKS", "SLURM"),
                          addr, port, "slurm")
    if "OMPI_COMM_WORLD_RANK" in env:
        return Rendezvous(_int(env, "OMPI_COMM_WORLD_RANK", "Open MPI"),
                          _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", "Open MPI")
                          if "OMPI_COMM_WORLD_LOCAL_RANK" in env else 0,
                          _int(env, "OMPI_COMM_WORLD_SIZE", "Open MPI"), addr or "127.0.0.1", port, "openmpi")
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        local = env.get("MPI_LOCALRANKID") or env.get("PMI_LOCAL_RANK")
        if local is None:
            # MPICH's Hydra does not export a local rank; one node is the common case.
            local = env["PMI_RANK"] if not env.get("LLMCTL_RANKS_PER_NODE") else str(
                int(env["PMI_RANK"]) % int(env["LLMCTL_RANKS_PER_NODE"]))
        return Rendezvous(_int(env, "PMI_RANK", "MPI"), int(local), _int(env, "PMI_SIZE", "MPI"),
                          addr or "127.0.0.1", port, "pmi")
    return Rendezvous(0, 0, 1, addr or "127.0.0.1", port, "single")


def init(rdv: Optional[Rendezvous] = None, backend: Optional[str] = None):
    """Start the default process group (NCCL on GPUs, gloo on CPUs); returns the device."""
    import torch
    import torch.distributed as dist

    rdv = rdv or discover()
    # DeepSpeed and DCP read these even when the group exists already.
    os.environ.update(rdv.env())
    if torch.cuda.is_available():
        device = torch.device("cuda", rdv.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if rdv.world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, rank=rdv.rank, world_size=rdv.world_size,
                                init_method=f"tcp://{rdv.master_addr}:{rdv.master_port}",
                                device_id=device if device.type == "cuda" else None)
    return device


def shutdown() -> None:
    """Barrier then destroy: without it a ZeRO-3 run can abort at interpreter exit."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
