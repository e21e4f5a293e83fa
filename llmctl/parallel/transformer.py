"""The parallelize function of our Transformer family (gpt and llama): TP (+SP), then FSDP2 or DDP.

Tensor parallelism (Shoeybi et al. 2019, Megatron-LM) splits each block's
attention by heads (wq/wk/wv column-wise, wo row-wise) and its MLP by the ffn
dimension (gate/up or fc column-wise, down or proj row-wise). Embeddings, norms
and the head stay replicated (every tensor-parallel rank holds them whole).

Without sequence parallelism each block ends in an all-reduce and the residual
stream between blocks is replicated. With it (Korthikanti et al. 2022, "Reducing
Activation Recomputation in Large Transformer Models") the residual stream is
split along the sequence: the norms run on each rank's sequence slice
(`SequenceParallel`), attention and MLP all-gather their input
(`PrepareModuleInput` Shard(1) -> Replicate) and reduce-scatter their output
(`RowwiseParallel(output_layouts=Shard(1))`). Same bytes moved as the all-reduce,
but norm activations and the residual stream take 1/tp of the memory. The first
block takes the replicated embeddings and keeps its slice; the last block (or the
final norm, where this module has it) hands a replicated tensor onward, so the
head, the loss and pipeline send/recv see whole sequences.

Data parallelism then wraps the result: FSDP2 (`fully_shard`, ZeRO-3-like,
each block its own all-gather unit, then the root) or DDP.
"""

from __future__ import annotations


def apply_tp(model, tp_mesh, sequence_parallel: bool = False) -> None:
    """Shard every block's projections over `tp_mesh`, with sequence parallelism if asked;
    fix the per-rank head counts."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = tp_mesh.size()
    # With SP the row-wise projections reduce-scatter onto sequence slices instead of all-reducing.
    row = (lambda: RowwiseParallel(output_layouts=Shard(1))) if sequence_parallel else RowwiseParallel
    blocks = list(_blocks(model))
    for blk in blocks:
        plan = {"attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
                "attn.wo": row()}
        if blk.mlp.swiglu:
            plan.update({"mlp.gate": ColwiseParallel(), "mlp.up": ColwiseParallel(), "mlp.down": row()})
        else:
            plan.update({"mlp.fc": ColwiseParallel(), "mlp.proj": row()})
        if sequence_parallel:
            plan.update(_sp_block_plan())
        parallelize_module(blk, tp_mesh, plan)
        # The attention reshapes its local projections by head: each rank holds heads/tp.
        blk.attn.heads //= tp
        blk.attn.kv_heads //= tp
    if sequence_parallel and blocks:
        _sp_boundaries(model, blocks, tp_mesh)


def _sp_block_plan() -> dict:
    """Inside a block: norms on sequence slices, attention/MLP inputs gathered whole."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import PrepareModuleInput, SequenceParallel

    # attn(x, cos, sin): only x is gathered; the rotary tables are plain, replicated tensors.
    return {"norm1": SequenceParallel(), "norm2": SequenceParallel(),
            "attn": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                       desired_input_layouts=(Replicate(), None, None), use_local_output=True),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                      use_local_output=True)}


def _sp_boundaries(model, blocks, tp_mesh) -> None:
    """Where the sequence-parallel region begins and ends."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (PrepareModuleInput, PrepareModuleOutput, SequenceParallel,
                                                   parallelize_module)

    # Entry: each rank keeps its slice of the (replicated) embeddings or of the previous
    # pipeline stage's output; the backward all-gathers the slices' gradients.
    parallelize_module(blocks[0], tp_mesh, PrepareModuleInput(
        input_layouts=(Replicate(), None, None), desired_input_layouts=(Shard(1), None, None),
        use_local_output=True))
    if getattr(model, "norm", None) is not None:
        # Exit after the final norm (itself on slices): the head and loss see whole sequences.
        parallelize_module(model, tp_mesh, {
            "norm": SequenceParallel(),
            "head": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                       use_local_output=True)})
    else:
        # A pipeline stage before the last: send whole sequences to the next stage.
        parallelize_module(blocks[-1], tp_mesh, PrepareModuleOutput(
            output_layouts=(Shard(1),), desired_output_layouts=(Replicate(),), use_local_output=True))


def apply_fsdp(model, dp_mesh, reshard_after_forward: bool = True):
    """FSDP2: each block one unit, then the root (embeddings, final norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for blk in _blocks(model):
        fully_shard(blk, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    return model


def apply_ddp(model, dp_mesh, device, autocast=None):
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, process_group=dp_mesh.get_group(), device_ids=ids)
    settle_buckets(ddp, device, autocast)
    return ddp


def settle_buckets(ddp, device, autocast=None) -> None:
    """One throw-away forward and backward, so that DDP's gradient buckets take their final
    layout before the first real step: a resumed run then sums its gradients as an
    uninterrupted one does, bit for bit.

    DDP reduces the gradients of its first backward after construction in one bucket, in
    parameter order; before the next forward it regroups them (the Reducer's bucket
    rebuild) in the order they became ready, in buckets of 1 and 25 MB. Each bucket is one
    flat all-reduce, and a ring all-reduce over more than two ranks (gloo's, NCCL's) adds
    the ranks' values of an element in an order set by its offset in the buffer. So the
    first step of every process sums in another order than the steps after it: a run
    resumed at step k would reduce step k+1 in the first-iteration layout where the
    uninterrupted run used the regrouped one, and the weights part in the last bits (seen
    with 4 ranks; two ranks add two numbers, which is the same either way). With this, the
    rebuild happens here, on gradients that are then dropped, and every real step of every
    process reduces in the regrouped layout. Costs one forward and backward of one short
    sequence at start; the weights, the optimizer and the random state are left untouched.
    """
    import contextlib

    import torch

    x = torch.zeros((1, 2), dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # Under the run's autocast: its casts are nodes of the graph whose backward order
        # sets the regrouped layout.
        with autocast() if autocast is not None else contextlib.nullcontext():
            loss = ddp(x, x)
        loss.float().backward()
    ddp.zero_grad(set_to_none=True)


def parallelize(model, dims, mesh, device, data_parallel: bool = True, autocast=None):
    """Apply `dims` (a ParallelDims) to `model` on `mesh`; returns the module to train.

    `data_parallel=False` applies tensor parallelism only: pipeline stages run several
    micro-batch forwards before their backwards, which DDP's bucket rebuild rejects,
    so the runner all-reduces their gradients itself. `autocast` (a context factory, or
    None for float32) is the one the steps run under (DDP's bucket layout: settle_buckets).
    """
    if dims.tp > 1:
        apply_tp(model, mesh["tp"], sequence_parallel=dims.sequence_parallel)
    if not data_parallel:
        return model
    if dims.dp_mode == "fsdp" and (dims.dp > 1 or dims.tp > 1):
        return apply_fsdp(model, mesh["dp"])
    if dims.dp > 1:
        return apply_ddp(model, mesh["dp"], device, autocast)
    return model


def _blocks(model):
    # A whole Transformer, or a pipeline stage holding some of its blocks.
    blocks = model.blocks
    return blocks.values() if hasattr(blocks, "values") else list(blocks)
