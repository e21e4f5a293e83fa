"""What the one-process loop (llmctl.train.trainer) and the distributed one
(llmctl.train.distributed) set up alike: torch's threads, the precision for the
device and the optimizer.

Kept apart from both loops so that neither imports the other for these."""

from __future__ import annotations

import os


def resolve_precision(setting: str, device) -> str:
    """`training.precision` for this device: 'auto' is bf16 on a GPU, fp32 on a CPU."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return setting


def build_optimizer(model, cfg, device):
    """AdamW with decoupled weight decay on matrices only (not on norms, biases)."""
    import torch

    o = cfg.optimizer
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    from llmctl.train.speed import optimizer_options

    extra = optimizer_options(o.fused, device)  # optimizer.fused: fused kernel, foreach or torch's default
    try:
        if o.type == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.betas[0], **extra)
        cls = torch.optim.AdamW if o.type == "adamw" else torch.optim.Adam
        return cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **extra)
    except RuntimeError as e:  # e.g. no fused kernel for this device or dtype
        from llmctl.errors import LlmctlError

        raise LlmctlError(f"optimizer.fused = {o.fused}: torch refuses it on {device}: {e}",
                          hint='set optimizer.fused = "auto"') from None


def threads_line(configured) -> int:
    """Size torch's intra-op threads by the job's CPUs (llmctl.hw.threads) before any work,
    and say so: torch's default (every core of the node) oversubscribes a shared node. The
    count is fixed by the job, not the load, so a resumed run computes as the first did."""
    import sys

    from llmctl.hw import threads

    n, why = threads.apply(configured, "the training config's training.threads")
    rank = os.environ.get("RANK")
    who = f"rank {rank}: " if rank is not None else ""
    print(f"llmctl.train: {who}{n} torch threads ({why})", file=sys.stderr, flush=True)
    return n
