"""One optimizer step over any layout: DDP, FSDP2, ZeRO, TP, PP and their mixes.

Every rank is handed the same global batch (micro_batch x grad_accum x dp
sequences) and takes its data-parallel share: dp rank r owns rows
[r·B/dp, (r+1)·B/dp). The loss is the mean over all micro-batches, so the step
equals the single-process step with grad_accum x dp micro-batches, up to float
rounding; this is what the equivalence tests check.

A step whose loss or global gradient norm is not finite is not applied (`finite` is
then False): both are reduced over all ranks before the optimizer steps, so every
rank withholds the same steps. DeepSpeed's engine steps by itself: there `finite`
only reports, and the trainer stops the run.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist

from llmctl.train.nonfinite import step_is_finite


class Runner:
    def __init__(self, model, dims, mesh, device, make_optimizer: Callable, micro_batch: int,
                 grad_accum: int, grad_clip: float = 1.0, precision: str = "fp32",
                 init_loss_scale: float = 2.0 ** 16):
        from llmctl.parallel import transformer as tx

        self.dims, self.mesh, self.device = dims, mesh, device
        self.micro_batch, self.grad_accum, self.grad_clip = micro_batch, grad_accum, grad_clip
        self.dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
        self.pp_rank = mesh["pp"].get_local_rank() if mesh is not None else 0
        self.engine = self.schedule = None
        self.holds_loss = True
        self.finite = True  # whether the last step's loss and gradient norm were finite
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else None
        if precision == "fp16" and dims.tp > 1:
            from llmctl.errors import LlmctlError

            # torch's grad scalers cannot unscale a mix of plain and DTensor gradients, which is
            # what a tensor-parallel model holds (replicated embeddings, sharded blocks).
            raise LlmctlError(f"precision fp16 with tp = {dims.tp} is not supported",
                              hint="use bf16 (training.precision = \"bf16\"), or tp = 1")
        self.model_cfg = model.cfg  # a checkpoint of one process is read by parameter order
        # fp16 needs loss scaling; DeepSpeed's engine brings its own.
        self.scaler = (_grad_scaler(dims, mesh, device, init_loss_scale)
                       if precision == "fp16" and dims.dp_mode != "zero" else None)
        if dims.pp > 1:
            from llmctl.parallel.pipeline import build_schedule, build_stages

            stages = build_stages(model, dims, self.pp_rank)
            wrapped = []
            for st in stages:
                st.to(device)
                wrapped.append((st.stage_index, tx.parallelize(st, dims, mesh, device, data_parallel=False)))
            self.modules = [m for _, m in wrapped]
            self.holds_loss = any(st.last for st in stages)
            self.schedule = build_schedule(wrapped, dims, mesh["pp"].get_group(), device, grad_accum,
                                           loss_fn=self._stage_loss)
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
            self.modules = [tx.parallelize(model, dims, mesh, device, autocast=self.autocast)
                            if mesh is not None else model]
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
            # bf16 on the stages: autocast around the schedule covers each stage's forward (and
            # the loss, which lm_loss takes in float32); activations between stages stay float32,
            # the residual stream's dtype.
            with self.autocast() if self.autocast else _null():
                self.schedule.step(*args, target=y if self.holds_loss else None, losses=losses)
            if self.holds_loss:
                loss = torch.stack([l.detach().float() for l in losses]).mean()
                if self.scaler is not None:
                    loss = loss / self.scaler.get_scale()  # the schedule kept the scaled losses
            mean = self._mean_loss(loss)
            if self.dims.dp > 1:
                self._all_reduce_grads()
            norm = self._finish_step(mean)
        elif self.engine is not None:
            for xm, ym in zip(x.split(self.micro_batch), y.split(self.micro_batch)):
                out = self.engine(xm, ym)
                self.engine.backward(out)
                loss += out.detach().float() / self.grad_accum
                self.engine.step()
            norm = float(self.engine.get_global_grad_norm() or 0.0)
            mean = self._mean_loss(loss)
            self.finite = step_is_finite(mean, norm, scaled=self.engine.fp16_enabled())
        else:
            model = self.modules[0]
            for xm, ym in zip(x.split(self.micro_batch), y.split(self.micro_batch)):
                ctx = self.autocast() if self.autocast else _null()
                with ctx:
                    out = model(xm, ym) / self.grad_accum
                (self.scaler.scale(out) if self.scaler is not None else out).backward()
                loss += out.detach().float()
            mean = self._mean_loss(loss)
            norm = self._finish_step(mean)
        return mean, norm

    def _finish_step(self, loss: float) -> float:
        """Gradients complete on every rank: reduce partials, unscale (fp16), clip, and step
        unless the loss (the mean over all ranks) or the global gradient norm is not finite."""
        self._reduce_partial_grads()
        if self.scaler is not None:
            # Divides the gradients by the scale; ShardedGradScaler also agrees on inf/NaN over
            # all ranks, so that every rank skips the same steps.
            self.scaler.unscale_(self.optimizer)
        norm = self._clip()
        # Both numbers are the same on every rank (reduced over all of them): the same decision.
        self.finite = step_is_finite(loss, norm, scaled=self.scaler is not None)
        if self.scaler is not None:
            if self.finite:
                self.scaler.step(self.optimizer)  # skipped if any rank saw inf/NaN in the gradients
            self.scaler.update()
        elif self.finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _stage_loss(self, logits, targets):
        """The pipeline's loss on the last stage; scaled under fp16 (its backward starts there)."""
        from llmctl.parallel.pipeline import lm_loss

        loss = lm_loss(logits, targets)
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def evaluate(self, batches) -> float:
        """Mean loss over `batches` ((x, y) pairs, arrays or tensors), the same on every rank.

        Every rank sees the whole of each batch (no data-parallel share: every replica
        computes the same numbers, and FSDP2/ZeRO-3 need every rank in the forward). The
        plain and DDP/FSDP2/TP modules run their forward; ZeRO runs the engine's; a pipeline
        passes each batch through its stages in order and the last stage's loss reaches
        every rank, so each layout logs the single process's validation loss.
        """
        def tensor(a):
            return (a if isinstance(a, torch.Tensor) else torch.from_numpy(a)).to(self.device)

        mods = [self.engine] if self.engine is not None else self.modules
        for m in mods:
            m.eval()
        total = torch.zeros((), device=self.device)
        try:
            with torch.no_grad():
                for x, y in batches:
                    x, y = tensor(x), tensor(y)
                    # A mean over sequences (as the single process): a short last batch weighs less.
                    if self.engine is not None:
                        total += self.engine(x, y).float() * len(x)  # DeepSpeed applies its own bf16/fp16
                        continue
                    with self.autocast() if self.autocast else _null():
                        if self.schedule is not None:
                            total += self._pipeline_loss(x, y) * len(x)
                        else:
                            total += self.modules[0](x, y).float() * len(x)
        finally:
            for m in mods:
                m.train()
        return self._mean_loss(total) / max(sum(len(x) for x, _ in batches), 1)

    def _pipeline_loss(self, x, y):
        """One batch through every stage in order (point to point over the pp group); the loss
        on the rank holding the last stage, zero elsewhere (`_mean_loss` counts holders only).

        Not the training schedule: its micro-batch count and shapes are fixed at the first step,
        and a validation batch may be shorter. Stage i lives on pp rank i % pp, so consecutive
        stages are always on different ranks.
        """
        from llmctl.parallel.pipeline import lm_loss

        pp, group = self.dims.pp, self.mesh["pp"].get_group()
        n = pp * self.dims.vpp
        mine = {m.stage_index: m for m in self.modules}
        hidden = next(iter(mine.values())).cfg.hidden
        loss = torch.zeros((), device=self.device)
        for i in range(n):
            if i % pp != self.pp_rank:
                continue
            if i == 0:
                h = x
            else:
                # Activations travel as float32 whatever autocast made of them.
                h = torch.empty(x.shape[0], x.shape[1], hidden, device=self.device)
                dist.recv(h, group=group, group_src=(i - 1) % pp)
            out = mine[i](h)
            if i == n - 1:
                loss = lm_loss(out, y).float()
            else:
                dist.send(out.float().contiguous(), group=group, group_dst=(i + 1) % pp)
        return loss

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

    def _reduce_partial_grads(self) -> None:
        """Sum the gradients DTensor left as Partial: one all-reduce per mesh dimension, flat.

        Under sequence parallelism each tensor-parallel rank computes a norm's weight gradient
        from its own sequence slice, so DTensor leaves it Partial(sum). Reduced here, every
        gradient is either replicated or a shard, which is what the norm below counts on (and
        AdamW would otherwise reduce them one parameter at a time).
        """
        from collections import defaultdict

        from torch.distributed.tensor import DTensor, Replicate

        groups = defaultdict(list)
        for p in self.parameters():
            g = p.grad
            if isinstance(g, DTensor) and any(pl.is_partial() for pl in g.placements):
                groups[(g.device_mesh, tuple(g.placements))].append(p)
        for (mesh, places), params in groups.items():
            local = [p.grad.to_local() for p in params]
            flat = torch.cat([t.reshape(-1) for t in local])
            for dim, pl in enumerate(places):
                if pl.is_partial():
                    dist.all_reduce(flat, group=mesh.get_group(dim))
                    if pl.reduce_op == "avg":
                        flat /= mesh.size(dim)
            target = [Replicate() if pl.is_partial() else pl for pl in places]
            offset = 0
            for p, t in zip(params, local):
                piece = flat[offset:offset + t.numel()].view_as(t)
                offset += t.numel()
                p.grad = DTensor.from_local(piece, mesh, target, run_check=False,
                                            shape=p.grad.shape, stride=p.grad.stride())

    def _mean_loss(self, loss) -> float:
        if not dist.is_initialized():
            return float(loss)
        # Ranks without the loss (not the last pipeline stage) contribute zero and are not counted.
        buf = torch.stack([loss.float(), torch.tensor(1.0 if self.holds_loss else 0.0, device=self.device)])
        dist.all_reduce(buf)
        return float(buf[0] / buf[1])

    def _clip(self) -> float:
        """Global gradient norm across DTensor shards, replicas and pipeline stages; clip to grad_clip.

        One fused local computation and at most one all-reduce per step: every rank sums the
        squares of the gradient pieces it holds, each divided by the number of ranks holding
        that same piece (a replicated tensor counts once over the world), and one all-reduce
        over all ranks adds them up. Asking each DTensor for its full norm instead costs one
        collective per parameter, which dominated tp=2 and FSDP2 steps on gloo.
        """
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
        norms = torch._foreach_norm(local, 2.0)
        sq = torch.stack([n.float() for n in norms]) ** 2
        if dist.is_initialized() and self.mesh is not None:
            copies = torch.tensor([self._copies(g) for g in grads], dtype=sq.dtype, device=sq.device)
            total_sq = (sq / copies).sum()
            dist.all_reduce(total_sq)
        else:
            total_sq = sq.sum()
        total = float(total_sq.sqrt())
        if self.grad_clip > 0 and total > self.grad_clip:
            torch._foreach_mul_(local, self.grad_clip / (total + 1e-6))
        return total if math.isfinite(total) else float("nan")

    def _copies(self, grad) -> int:
        """How many ranks hold this very piece of gradient (its replicas across dp and tp).

        After backward every non-pipeline rank of a stage holds either the same plain gradient
        (DDP and the pipeline's dp average, tensor-parallel-replicated embeddings and head)
        or a DTensor whose Shard placements split it over some mesh dimensions.
        """
        from torch.distributed.tensor import DTensor

        replicas = self.dims.dp * self.dims.tp
        if isinstance(grad, DTensor):
            for size, place in zip(grad.device_mesh.shape, grad.placements):
                # Shard and FSDP2's _StridedShard (dp x tp) split it; Partials were summed before.
                if not place.is_replicate():
                    replicas //= size
        return max(replicas, 1)

    def local_parameters(self):
        """(name, tensor) of the parameter pieces this rank holds: a DTensor's local shard,
        a ZeRO-3 partition (for checking them without gathering)."""
        from torch.distributed.tensor import DTensor

        for m in self.modules:
            for k, v in m.named_parameters():
                v = v.to_local() if isinstance(v, DTensor) else getattr(v, "ds_tensor", v)
                yield _clean(k), v

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


def _grad_scaler(dims, mesh, device, init_scale: float):
    """fp16 loss scaling (Micikevicius et al. 2018) that keeps every rank's decision the same.

    One process, or DDP (every rank holds the same averaged gradients): torch.amp.GradScaler.
    Where ranks hold different gradients (FSDP2 and tensor-parallel shards, pipeline stages)
    one rank may overflow alone; ShardedGradScaler all-reduces the inf/NaN flag over all
    ranks, so they all skip the step and back off the scale together.
    """
    if mesh is None or (dims.dp_mode == "ddp" and dims.tp == 1 and dims.pp == 1):
        scaler = torch.amp.GradScaler(device.type, init_scale=init_scale)
    else:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = ShardedGradScaler(device=device.type, init_scale=init_scale)
    # The scale comes into being at the first scale(); pipeline stages without the loss never
    # call it, yet unscale and step like the others.
    scaler.scale(torch.zeros((), device=device))
    return scaler


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
