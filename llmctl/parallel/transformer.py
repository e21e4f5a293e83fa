"""The parallelize function of our Transformer family (gpt and llama): TP, then FSDP2 or DDP.

Tensor parallelism (Shoeybi et al. 2019, Megatron-LM) splits each block's
attention by heads (wq/wk/wv column-wise, wo row-wise) and its MLP by the ffn
dimension (gate/up or fc column-wise, down or proj row-wise): one all-reduce
after attention and one after the MLP per forward. Embeddings, norms and the
head stay replicated (every tensor-parallel rank computes them identically).
Data parallelism then wraps the result: FSDP2 (`fully_shard`, ZeRO-3-like,
each block its own all-gather unit, then the root) or DDP.
"""

from __future__ import annotations


def apply_tp(model, tp_mesh) -> None:
    """Shard every block's projections over `tp_mesh`; fix the per-rank head counts."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = tp_mesh.size()
    for blk in _blocks(model):
        plan = {"attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
                "attn.wo": RowwiseParallel()}
        if blk.mlp.swiglu:
            plan.update({"mlp.gate": ColwiseParallel(), "mlp.up": ColwiseParallel(), "mlp.down": RowwiseParallel()})
        else:
            plan.update({"mlp.fc": ColwiseParallel(), "mlp.proj": RowwiseParallel()})
        parallelize_module(blk, tp_mesh, plan)
        # The attention reshapes its local projections by head: each rank holds heads/tp.
        blk.attn.heads //= tp
        blk.attn.kv_heads //= tp


def apply_fsdp(model, dp_mesh, reshard_after_forward: bool = True):
    """FSDP2: each block one unit, then the root (embeddings, final norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for blk in _blocks(model):
        fully_shard(blk, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    return model


def apply_ddp(model, dp_mesh, device):
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, process_group=dp_mesh.get_group(), device_ids=ids)


def parallelize(model, dims, mesh, device, data_parallel: bool = True):
    """Apply `dims` (a ParallelDims) to `model` on `mesh`; returns the module to train.

    `data_parallel=False` applies tensor parallelism only: pipeline stages run several
    micro-batch forwards before their backwards, which DDP's bucket rebuild rejects,
    so the runner all-reduces their gradients itself.
    """
    if dims.tp > 1:
        apply_tp(model, mesh["tp"])
    if not data_parallel:
        return model
    if dims.dp_mode == "fsdp" and (dims.dp > 1 or dims.tp > 1):
        return apply_fsdp(model, mesh["dp"])
    if dims.dp > 1:
        return apply_ddp(model, mesh["dp"], device)
    return model


def _blocks(model):
    # A whole Transformer, or a pipeline stage holding some of its blocks.
    blocks = model.blocks
    return blocks.values() if hasattr(blocks, "values") else list(blocks)
