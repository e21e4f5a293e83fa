"""Pipeline parallelism: cut the Transformer into stages and schedule their micro-batches.

Every rank builds the whole model from the same seed (so the weights equal the
single-process run's), then keeps only its stages' parts: the first stage the
embeddings, the last the final norm and head, each stage its `layers_per_stage`
blocks (uneven splits allowed). Parameter names stay those of the full model
(`blocks.<global index>...`), so checkpoints of any layout line up. Schedules
from `torch.distributed.pipelining`: 1F1B (Narayanan et al. 2021), GPipe, and
interleaved 1F1B with `vpp` stages per rank (rank r holds stages r, r+pp, ...).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Stage(nn.Module):
    """Blocks [lo, hi) of a Transformer, plus the embeddings (first) or the head (last)."""

    def __init__(self, model, lo: int, hi: int, first: bool, last: bool):
        super().__init__()
        self.cfg = model.cfg
        self.first, self.last = first, last
        self.tok_emb = model.tok_emb if first else None
        self.pos_emb = model.pos_emb if first else None
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(lo, hi)})
        self.norm = model.norm if last else None
        self.head = model.head if last else None
        if model.rope_cos is not None:
            self.register_buffer("rope_cos", model.rope_cos, persistent=False)
            self.register_buffer("rope_sin", model.rope_sin, persistent=False)
        else:
            self.rope_cos = self.rope_sin = None

    def forward(self, x):
        if self.first:
            t = x.shape[1]
            tokens = x
            x = self.tok_emb(tokens)
            if self.pos_emb is not None:
                x = x + self.pos_emb(torch.arange(t, device=tokens.device))
        t = x.shape[1]
        cos = sin = None
        if self.rope_cos is not None:
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for blk in self.blocks.values():
            x = blk(x, cos, sin)
        if self.last:
            return self.head(self.norm(x))
        return x


def lm_loss(logits, targets):
    """The Transformer's own loss, applied by the schedule on the last stage."""
    from llmctl.model.transformer import lm_loss as loss

    return loss(logits, targets)


def build_stages(model, dims, pp_rank: int) -> list[Stage]:
    """This rank's stages (one, or vpp for interleaved schedules), with recomputation as planned."""
    split = dims.stage_layers(len(model.blocks))
    starts = [sum(split[:i]) for i in range(len(split))]
    n = len(split)
    out = []
    for k in range(dims.vpp):
        idx = pp_rank + k * dims.pp
        lo, hi = starts[idx], starts[idx] + split[idx]
        stage = Stage(model, lo, hi, first=idx == 0, last=idx == n - 1)
        stage.stage_index = idx
        if dims.recompute_layers_per_stage:
            r = dims.recompute_layers_per_stage[idx]
            for j, blk in enumerate(stage.blocks.values()):
                blk.recompute = j < r
        out.append(stage)
    return out


def build_schedule(stages, dims, pp_group, device, n_microbatches: int, loss_fn=lm_loss):
    """The plan's schedule over this rank's stages (wrapped modules in `stages`)."""
    from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe,
                                              ScheduleInterleaved1F1B)

    n = dims.pp * dims.vpp
    pstages = [PipelineStage(mod, idx, n, device, group=pp_group) for idx, mod in stages]
    if dims.vpp > 1 or dims.schedule == "interleaved":
        return ScheduleInterleaved1F1B(pstages, n_microbatches, loss_fn=loss_fn)
    cls = ScheduleGPipe if dims.schedule == "gpipe" else Schedule1F1B
    return cls(pstages[0], n_microbatches, loss_fn=loss_fn)
