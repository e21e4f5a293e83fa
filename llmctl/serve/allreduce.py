"""Tensor-parallel serving's data plane: the sum of a row-parallel layer's partial
outputs over every rank, as one collective per layer.

MPI stays the control plane (llmctl.serve.tp sends each step's batch from rank 0);
the layer sums no longer travel through rank 0 (every worker's part in, the total
back out: a star whose cost grows with the ranks, two host copies per layer).

- CPU tensors: MPI's nonblocking `Iallreduce` in place, on a numpy view of the
  tensor itself (fp32 and fp64: no copy at all; numpy has no bf16 and MPI no fp16
  sum, so those dtypes go through one fp32 copy).
- CUDA tensors: NCCL through torch.distributed, on a process group made from the MPI
  communicator's rank and size (rank 0's address and a free port are broadcast over
  MPI). Not run on this project's CPU-only test machines.

Either way the call is nonblocking and its request is handed to `waiter`, which
polls it with the deadlines of llmctl.serve.rankloss: a dead peer ends the wait
(RankLost on rank 0, the process on a worker) instead of hanging in the collective.
"""

from __future__ import annotations

import os
import socket

# dtypes MPI sums in place on a numpy view; the rest go through an fp32 copy
_IN_PLACE = ("float32", "float64")


class AllReduce:
    """`reduce(t)`: the sum of `t` over the communicator's ranks (t is overwritten
    when it can be, and returned)."""

    def __init__(self, comm, device, waiter):
        self.comm, self.waiter = comm, waiter
        self.nccl = nccl_group(comm, device) if getattr(device, "type", device) == "cuda" else None
        self.backend = "nccl" if self.nccl is not None else "mpi"

    def __call__(self, t):
        if t.is_cuda:
            return self._nccl(t)
        from mpi4py import MPI

        in_place = str(t.dtype).removeprefix("torch.") in _IN_PLACE and t.is_contiguous()
        buf = t if in_place else t.float().contiguous()
        req = self.comm.Iallreduce(MPI.IN_PLACE, buf.detach().numpy(), op=MPI.SUM)
        self.waiter(req, "all-reduce of a layer's partial sums")
        return t if in_place else buf.to(t.dtype)

    def _nccl(self, t):
        import torch.distributed as dist

        if self.nccl is None:
            raise RuntimeError("a CUDA tensor to reduce, but no NCCL group (the model moved after setup?)")
        work = dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.nccl, async_op=True)
        self.waiter(_Work(work), "NCCL all-reduce of a layer's partial sums")
        return t


class _Work:
    """A torch.distributed Work polled like an MPI request (`test()` -> (done, None))."""

    def __init__(self, work):
        self.work = work

    def test(self):
        return self.work.is_completed(), None


def nccl_group(comm, device):
    """The NCCL process group of all the communicator's ranks, made from its rank and
    size. A collective: every rank calls it at the same point (setup)."""
    import datetime

    import torch
    import torch.distributed as dist

    from llmctl.serve.rankloss import TIMEOUT_S

    rank, size = comm.Get_rank(), comm.Get_size()
    addr = None
    if rank == 0:
        with socket.socket() as s:  # a free port for torch's TCPStore, served by rank 0
            s.bind(("", 0))
            addr = (os.environ.get("MASTER_ADDR") or socket.gethostname(), s.getsockname()[1])
    host, port = comm.bcast(addr, root=0)
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    # The store and the first communicator wait for every rank: startup, not a step, so
    # a generous deadline (steps keep TIMEOUT_S through the waiter).
    dist.init_process_group("nccl", init_method=f"tcp://{host}:{port}", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=max(60.0, TIMEOUT_S)), device_id=device)
    return dist.group.WORLD


def bind_local(comm) -> None:
    """Per node: with CUDA, each rank takes the GPU of its rank on the node (one device
    per rank, as NCCL wants; with one visible GPU per rank, that one); the waits spin
    only if the node's ranks fit its CPUs (rankloss.set_spin). A collective: every
    rank calls it before loading the model."""
    import torch
    from mpi4py import MPI

    from llmctl.serve.rankloss import set_spin

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        set_spin(local.Get_size())
        if torch.cuda.is_available():
            torch.cuda.set_device(local.Get_rank() % torch.cuda.device_count())
    finally:
        local.Free()
