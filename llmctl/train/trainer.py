"""The training loop of one process (several ranks: llmctl.train.distributed).

Reads the run folder (`setup`), builds the model with the configured kernels,
resumes from the checkpoint `latest` points at, then per optimizer step: set the
learning rate, run `grad_accum` micro-batches (bf16 autocast on a GPU, fp32 on a
CPU), clip the gradient norm, step AdamW. Every `log_interval` steps a metrics
line, every `eval_interval` a validation loss, every `interval_steps` a
checkpoint; SIGUSR1 (preemption) finishes the step, checkpoints, requeues a SLURM
job and exits 75; SIGTERM (cancel) finishes the step, checkpoints and exits 143
without requeueing (llmctl.train.preempt). At the end: a final validation loss, a
checkpoint and the loss curve.
A step whose loss or gradient norm is not finite is never applied: the run stops
there, or skips it (`training.nonfinite`, llmctl.train.nonfinite).
"""

from __future__ import annotations

import os
import time
from llmctl.train.optim import build_optimizer, resolve_precision, threads_line
from llmctl.train.preempt import Preemption, finish, reason


def _device():
    import torch

    if torch.cuda.is_available():
        # srun --gpu-bind=single:1 leaves each rank one visible GPU (index 0 for every
        # LOCAL_RANK); without binding each rank sees them all and takes its own.
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def evaluate(model, batches, device, autocast) -> float:
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in batches:
            with autocast():
                loss = model(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
            total += float(loss) * len(x)  # a mean over sequences: a short last batch weighs less
    model.train()
    return total / max(sum(len(x) for x, _ in batches), 1)


def train(run_dir: str, verify: bool = True) -> int:
    """Train the run in `run_dir` to its max_steps (or until preempted); returns the exit code.

    `verify` False (`--skip-verify`) resumes from a checkpoint whose files do not match
    the digests in its state.json."""
    import contextlib

    from llmctl.data.shards import TokenStore
    from llmctl.train.loader import WindowSampler, validation_batches
    from llmctl.train.setup import load_run

    # Every check that needs no torch comes first: bad input fails in a blink.
    s = load_run(run_dir)
    if s.dims is not None and s.dims.world > 1:
        from llmctl.train.distributed import train_parallel

        return train_parallel(s, verify)
    cfg, tcfg = s.cfg, s.cfg.training
    train_store = TokenStore(s.data_dir, "train")
    val_store = TokenStore(s.data_dir, "val")
    sampler = WindowSampler(train_store, s.seq_len, tcfg.seed)
    val = validation_batches(val_store, s.seq_len, s.micro_batch, tcfg.eval_batches)

    import torch

    from llmctl.model.transformer import Transformer
    from llmctl.train.checkpoint import Checkpointer
    from llmctl.train.finetune import load_pretrained
    from llmctl.train.metrics import GpuMonitor, MetricsLog, flops_per_token, memory_gb, peak_flops, warn
    from llmctl.train.nonfinite import NonFiniteGuard, nonfinite_tensors, step_is_finite, weights_error
    from llmctl.train.plot import plot_run
    from llmctl.train.schedule import lr_at
    from llmctl.train.speed import compile_enabled

    threads_line(tcfg.threads)
    device = _device()
    precision = resolve_precision(tcfg.precision, device)
    # Bit-exact resume on a CPU needs nothing more: its kernels are deterministic for a
    # given thread count (torch.use_deterministic_algorithms would only add seconds of
    # compiler imports at start). On a GPU, speed wins: TF32 and nondeterministic kernels.
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.set_device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    torch.manual_seed(tcfg.seed)
    model = Transformer(s.model_cfg, attention=cfg.kernels.attention, norm=cfg.kernels.norm).to(device)
    load_pretrained(model, s)  # `[init] from`: fine-tuning starts from those weights
    model.set_recompute(s.recompute, s.recompute_layers)
    model.set_fused_qkv(cfg.kernels.fused_qkv)
    optimizer = build_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    ckpt = Checkpointer(s.run.task_checkpoints(s.task), cfg.checkpoint.keep_last)
    ckpt.clean_partial()
    hashes = s.hashes()
    step = 0
    latest = ckpt.latest()
    guard = NonFiniteGuard(tcfg.nonfinite, tcfg.max_skipped_steps)
    if latest is not None:
        state = ckpt.load(latest, model, optimizer, hashes, device, verify=verify, warn=warn)
        step = int(state["step"])
        guard.skipped = int(state.get("skipped_steps", 0))
        sampler.load_state_dict(state["data"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    compiled = compile_enabled(tcfg.compile, device)
    step_fn = torch.compile(model) if compiled else model

    fpt = flops_per_token(s.model_cfg, s.seq_len)
    peak, peak_source = peak_flops(s.hardware_path, device)
    gpu = GpuMonitor(device)
    from llmctl.track import training_tracker

    log = MetricsLog(s.run.metrics_file(s.task), tracker=training_tracker(s))
    log.write({"kind": "start", "step": step, "max_steps": tcfg.max_steps, "model": s.model_cfg.name,
               "params": model.num_parameters(), "device": str(device), "precision": precision,
               "micro_batch": s.micro_batch, "grad_accum": s.grad_accum, "seq_len": s.seq_len,
               "tokens_per_step": s.tokens_per_step, "flops_per_token": fpt, "peak_flops": peak,
               "peak_source": peak_source, "checkpoint": str(latest) if latest else None,
               "compile": compiled, "fused_qkv": cfg.kernels.fused_qkv, "threads": torch.get_num_threads(),
               "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
               "data": str(s.data_dir), "data_position": sampler.position})

    def latest_name():
        p = ckpt.latest()
        return p.name if p is not None else None

    def stop(error) -> None:
        log.write({"kind": "end", "step": step, "reason": "nonfinite"})
        log.close()
        raise error

    def save(at: int) -> None:
        bad = nonfinite_tensors(model.named_parameters())  # one pass over the weights
        if bad:
            stop(weights_error(at, bad, latest_name()))
        ckpt.save(at, model, optimizer, {
            **hashes, "data": sampler.state_dict(), "scheduler": {"type": cfg.schedule.type, "step": at},
            "scaler": scaler.state_dict() if scaler is not None else None,
            "max_steps": tcfg.max_steps, "time": time.time(), "skipped_steps": guard.skipped})

    predicted = s.plan.predicted if s.plan is not None else None
    preempt = Preemption().install()
    model.train()
    window_t0, window_tokens, saved_at = time.perf_counter(), 0, step
    while step < tcfg.max_steps:
        lr = lr_at(step, peak=cfg.optimizer.lr, warmup=cfg.schedule.warmup_steps,
                   max_steps=tcfg.max_steps, kind=cfg.schedule.type, min_ratio=cfg.schedule.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for _ in range(s.grad_accum):
            x, y = sampler.next_batch(s.micro_batch)
            x = torch.from_numpy(x).to(device, non_blocking=True)
            y = torch.from_numpy(y).to(device, non_blocking=True)
            with autocast():
                loss = step_fn(x, y) / s.grad_accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += loss.detach()
        if scaler is not None:
            scaler.unscale_(optimizer)
        clip = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        # The one device sync per step: a NaN or inf must be seen before the update is applied.
        loss_v, norm_v = torch.stack([loss_sum.float(), grad_norm.float()]).tolist()
        applied = step_is_finite(loss_v, norm_v, scaled=scaler is not None)
        if scaler is not None:
            if applied:
                scaler.step(optimizer)  # itself skips a step whose gradients overflowed
            scaler.update()
        elif applied:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_tokens += s.tokens_per_step

        last = step == tcfg.max_steps
        if step % tcfg.log_interval == 0 or last or preempt.requested or not applied:
            elapsed = time.perf_counter() - window_t0
            tps = window_tokens / max(elapsed, 1e-9)
            log.write({"kind": "train", "step": step, "max_steps": tcfg.max_steps, "loss": loss_v,
                       "lr": lr, "grad_norm": norm_v, "tokens_per_s": tps,
                       "step_time_s": elapsed / max(window_tokens / s.tokens_per_step, 1),
                       "mfu": (fpt * tps / peak) if peak else None, "tokens": step * s.tokens_per_step,
                       "epoch": round(sampler.epoch, 4), "memory_gb": memory_gb(device), **gpu.read(),
                       # the plan's prediction beside the measurement (`llmctl plan calibrate` fits them)
                       "predicted_step_time_s": predicted.step_time_s if predicted else None,
                       "predicted_mfu": predicted.mfu if predicted else None,
                       **({} if applied else {"skipped": True})})
            window_t0, window_tokens = time.perf_counter(), 0
        if not applied:
            error = guard.after(step, loss_v, norm_v, latest_name(), scaled=scaler is not None)
            if error is not None:
                stop(error)
        paused = time.perf_counter()
        if step % tcfg.eval_interval == 0 or last:
            log.write({"kind": "eval", "step": step, "val_loss": evaluate(model, val, device, autocast)})
        if step % cfg.checkpoint.interval_steps == 0 or last or preempt.requested:
            save(step)
            saved_at = step
        # Time spent on validation and checkpoints is not training throughput.
        window_t0 += time.perf_counter() - paused
        if preempt.requested:
            log.write({"kind": "end", "step": step, "reason": reason(preempt.level)})
            log.close()
            return finish(preempt.level)
    if saved_at != step:
        save(step)
    log.write({"kind": "end", "step": step, "reason": "finished"})
    log.close()
    plot_run(s.run.metrics_file(s.task), s.run.loss_plot(s.task))
    train_store.close()
    val_store.close()
    return 0
