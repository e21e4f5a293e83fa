"""One optimizer step over any layout: DDP, FSDP2, ZeRO, TP, PP and their mixes.

Every rank is handed the same global batch (micro_batch x grad_accum x dp
sequences) and takes its data-parallel share: dp rank r owns rows
[r·B/dp, (r+1)·B/dp). The loss is the mean over all micro-batches, so the step
equals the single-process step with grad_accum x dp micro-batches, up to float
rounding; this is what the equivalence tests check.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist


class Runner:
    def __init__(self, model, dims, mesh, device, make_optimizer: Callable, micro_batch: int,
                 grad_accum: int, grad_clip: float = 1.0, precision: str = "fp32"):
        from llmctl.parallel import transformer as tx

        self.dims, self.mesh, self.device = dims, mesh, device
        self.micro_batch, self.grad_accum, self.grad_clip = micro_batch, grad_accum, grad_clip
        self.dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
        self.pp_rank = mesh["pp"].get_local_rank() if mesh is not None else 0
        self.engine = self.schedule = None
        self.holds_loss = True
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else None
        if dims.pp > 1:
            from llmctl.parallel.pipeline import build_schedule, build_stages

            stages = build_stages(model, dims, self.pp_rank)
            wrapped = []
            for st in stages:
                st.to(device)
                wrapped.append((st.stage_index, tx.parallelize(st, dims, mesh, device, data_parallel=False)))
            self.modules = [m for _, m in wrapped]
            self.holds_loss = any(st.last for st in stages)
            self.schedule = build_schedule(wrapped, dims, mesh["pp"].get_group(), device, grad_accum)
            self.state_module = _local_model(stages)
            self.optimizer = make_optimizer(self.state_module)
        elif dims.dp_mode == "zero":
            from llmctl.parallel.zero import ds_config, initialize

            model.to(device)
            cfg = ds_config(dims.zero_stage, micro_batch, grad_accum, dims.dp, grad_clip, precision)
            self.engine = initialize(model, make_optimizer(model), cfg, device)
            self.modules = [self.engine.module]
            self.state_module = self.engine.module
            self.optimizer = self.engine.optimizer
        else:
            model.to(device)
            self.modules = [tx.parallelize(model, dims, mesh, device) if mesh is not None else model]
            self.state_module = self.modules[0]
            self.optimizer = make_optimizer(self.modules[0])

    def parameters(self):
        for m in self.modules:
            yield from m.parameters()

    def _share(self, t):
        rows = t.shape[0] // self.dims.dp
        return t[self.dp_rank * rows:(self.dp_rank + 1) * rows].to(self.device)

    def step(self, x, y, lr: float) -> tuple[float, float]:
        """One optimizer step on the global batch (x, y); returns (mean loss, gradient norm)."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = self._share(x), self._share(y)
        loss = torch.zeros((), device=self.device)
        if self.schedule is not None:
            losses = []
            first = any(getattr(m, "first", False) or getattr(getattr(m, "module", None), "first", False)
                        for m in self.modules)
            args = (x,) if first else ()
            self.schedule.step(*args, target=y if self.holds_loss else None, losses=losses)
            if self.holds_loss:
                loss = torch.stack([l.detach().float() for l in losses]).mean()
            if self.dims.dp > 1:
                self._all_reduce_grads()
            norm = self._clip()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        elif self.engine is not None:
            for xm, ym in zip(x.split(self.micro_batch), y.split(self.micro_batch)):
                out = self.engine(xm, ym)
                self.engine.backward(out)
                loss += out.detach().float() / self.grad_accum
                self.engine.step()
            norm = float(self.engine.get_global_grad_norm() or 0.0)
        else:
            model = self.modules[0]
            for xm, ym in zip(x.split(self.micro_batch), y.split(self.micro_batch)):
                ctx = self.autocast() if self.autocast else _null()
                with ctx:
                    out = model(xm, ym) / self.grad_accum
                out.backward()
                loss += out.detach().float()
            norm = self._clip()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return self._mean_loss(loss), norm

    def _all_reduce_grads(self) -> None:
        """Average the stage's gradients over its data-parallel replicas (one flat buffer)."""
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in self.parameters() if p.grad is not None]
        # A tensor-parallel stage's gradients are DTensors: reduce their local shards.
        grads = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.mesh["dp"].get_group())
        flat /= self.dims.dp
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _mean_loss(self, loss) -> float:
        if not dist.is_initialized():
            return float(loss)
        # Ranks without the loss (not the last pipeline stage) contribute zero and are not counted.
        buf = torch.stack([loss.float(), torch.tensor(1.0 if self.holds_loss else 0.0, device=self.device)])
        dist.all_reduce(buf)
        return float(buf[0] / buf[1])

    def _clip(self) -> float:
        """Global gradient norm across DTensor shards and pipeline stages; clip to grad_clip."""
        from torch.distributed.tensor import DTensor

        sq = torch.zeros((), device=self.device)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        for g in grads:
            n = g.norm()
            if isinstance(n, DTensor):
                n = n.full_tensor()
            sq += n.float() ** 2
        if self.dims.pp > 1:
            # Each stage holds different parameters: sum their squares over the pipeline.
            dist.all_reduce(sq, group=self.mesh["pp"].get_group())
        total = float(sq.sqrt())
        if self.grad_clip > 0 and total > self.grad_clip:
            scale = self.grad_clip / (total + 1e-6)
            for g in grads:
                g.mul_(scale)
        return total if math.isfinite(total) else float("nan")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's parameters, unsharded, under the full model's names (for tests and export)."""
        from torch.distributed.tensor import DTensor

        out = {}
        if self.engine is not None and self.dims.zero_stage == 3:
            import deepspeed

            params = list(self.engine.module.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {k: v.detach().clone().cpu() for k, v in self.engine.module.named_parameters()}
        for m in self.modules:
            for k, v in m.named_parameters():
                v = v.full_tensor() if isinstance(v, DTensor) else v
                out[_clean(k)] = v.detach().clone().cpu()
        return out


def _local_model(stages):
    """One module over this rank's pipeline stages whose names are the full model's
    (`tok_emb`, `blocks.<i>`, `norm`, `head`), so optimizer and checkpoint keys line up
    across layouts."""
    holder = torch.nn.Module()
    holder.blocks = torch.nn.ModuleDict()
    for st in stages:
        holder.blocks.update(st.blocks)
        for name in ("tok_emb", "pos_emb", "norm", "head"):
            if getattr(st, name) is not None:
                setattr(holder, name, getattr(st, name))
    return holder


def _clean(name: str) -> str:
    # DDP's "module." and torch.compile's "_orig_mod." are wrappers, not names.
    for p in ("module.", "_orig_mod."):
        name = name.replace(p, "")
    return name


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
