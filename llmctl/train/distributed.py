"""The training loop over several ranks: the plan's layout applied by llmctl.parallel.

Started once per rank by torchrun, srun or mpirun (`python -m llmctl.train` picks
this loop when the world has more than one rank). Every rank draws the same
global batch from the sampler (so the data order, and the sampler position in
checkpoints, equal the single-process run's) and trains its share through a
`Runner`. Rank 0 writes metrics; checkpoints are sharded (DCP under the full
model's names, ZeRO included: llmctl.parallel.checkpoint) in the same step-N/ +
`latest` layout as single-process ones, so a run resumes under any other layout,
number of ranks or in one process, and from a single-process checkpoint. Each rank
hashes its share of the files for state.json and checks its share at load; a
step that is not finite is withheld on every rank alike (llmctl.train.nonfinite).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

from llmctl.train.preempt import Preemption, finish, reason


def save_checkpoint(ckpt, step: int, runner, state: dict, rank: int, world: int = 1) -> Path:
    """Atomic across ranks: shards into a temporary folder, rank 0 renames it and moves `latest`.

    Every rank hashes its share of the files (state.json records them all). A write the
    operating system refuses on any rank (a full disk) is the same one-line error on every
    rank, and the temporary folder is removed."""
    import torch.distributed as dist

    from llmctl.errors import LlmctlError
    from llmctl.parallel import checkpoint as sharded
    from llmctl.train.checkpoint import checkpoint_files, digest_files, share, step_name

    final = ckpt.folder / step_name(step)
    tmp = ckpt.folder / f".tmp-{step_name(step)}-ranks"

    def attempt(fn, path: Path):
        try:
            fn()
        except LlmctlError as e:
            return e
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            err = ckpt.write_failure(path, step, e)
            if err is None:
                raise
            return err
        return None

    def together(err) -> None:
        """Where a barrier stood: every rank learns the first error any rank met, and raises it."""
        errs = [None] * world
        dist.all_gather_object(errs, None if err is None else (err.message, err.hint))
        first = next((e for e in errs if e is not None), None)
        if first is not None:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise LlmctlError(*first)

    def start() -> None:
        ckpt.folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()

    together(attempt(start, tmp) if rank == 0 else None)
    # Every layout, ZeRO included, writes DCP under the full model's names (any layout loads it).
    together(attempt(lambda: sharded.save(tmp, runner, rank, world), tmp / sharded.DCP_DIR))
    digests = [None] * world
    dist.all_gather_object(digests, digest_files(tmp, share(checkpoint_files(tmp), rank, world)))
    merged = {k: v for d in digests for k, v in d.items()}
    # sync_all: every rank's shard files, not only ours
    together(attempt(lambda: ckpt.publish(tmp, step, state, sync_all=True, digests=merged), tmp)
             if rank == 0 else None)
    return final


def load_checkpoint(ckpt, path: Path, runner, expect: dict, verify: bool = True, rank: int = 0,
                    world: int = 1) -> dict:
    import torch
    import torch.distributed as dist

    from llmctl.errors import LlmctlError
    from llmctl.parallel import checkpoint as sharded
    from llmctl.train.checkpoint import (FILES, RNG, check_files, read_state, refuse, set_rng_state, share,
                                         verify_files)
    from llmctl.train.metrics import warn

    state = read_state(path)
    for key in ("model_hash", "config_hash"):
        if state.get(key) != expect[key]:
            raise LlmctlError(f"{path}: checkpoint of another model or training config ({key} differs); "
                              "refusing to resume from it", hint="use a new run folder")
    if verify and FILES in state:
        # Each rank reads its share of the files; all of them see every problem.
        found = [None] * world
        dist.all_gather_object(found, verify_files(path, state, share(list(state[FILES]), rank, world)))
        problems = sorted(p for mine in found for p in mine)
        if problems:
            raise refuse(path, problems)
    else:
        check_files(path, state, verify, warn=warn if rank == 0 else (lambda _: None))
    try:  # whatever layout wrote it: DCP reshards it, ZeRO reads each parameter whole
        sharded.load_into(path, runner, runner.model_cfg, rank)
    except LlmctlError:
        raise
    except Exception as e:  # DCP raises CheckpointException, RuntimeError, KeyError...
        raise LlmctlError(f"{path}: cannot load the checkpoint into this layout: "
                          f"{' '.join(str(e).split())[:300]}") from None
    set_rng_state(torch.load(path / RNG, map_location="cpu", weights_only=True))
    return state


def train_parallel(s, verify: bool = True) -> int:
    """Train the run `s` (a RunSetup) on this rank; returns the exit code."""
    from llmctl.data.shards import TokenStore
    from llmctl.errors import LlmctlError
    from llmctl.train.loader import WindowSampler, validation_batches

    cfg, tcfg = s.cfg, s.cfg.training
    if tcfg.nonfinite == "skip" and s.dims.dp_mode == "zero":
        raise LlmctlError('training.nonfinite = "skip" is not supported with DeepSpeed ZeRO: its engine '
                          "applies every step itself", hint='use "stop" (the default), or fsdp / ddp')
    from llmctl.train.speed import check_fused_qkv, compile_enabled

    compile_enabled(tcfg.compile, None, s.dims.world)  # true is refused with several ranks
    check_fused_qkv(cfg.kernels.fused_qkv, s.dims)
    train_store = TokenStore(s.data_dir, "train")
    val_store = TokenStore(s.data_dir, "val")
    sampler = WindowSampler(train_store, s.seq_len, tcfg.seed)
    val = validation_batches(val_store, s.seq_len, s.micro_batch, tcfg.eval_batches)

    import torch
    import torch.distributed as dist

    from llmctl.model.transformer import Transformer
    from llmctl.parallel import rendezvous
    from llmctl.parallel.dims import build_mesh
    from llmctl.parallel.runner import Runner
    from llmctl.train.checkpoint import Checkpointer
    from llmctl.train.finetune import load_pretrained
    from llmctl.train.metrics import GpuMonitor, MetricsLog, flops_per_token, memory_gb, peak_flops
    from llmctl.train.nonfinite import HINT, NonFiniteGuard, nonfinite_tensors, weights_error
    from llmctl.train.schedule import lr_at
    from llmctl.train.optim import build_optimizer, resolve_precision
    from llmctl.train.optim import threads_line

    threads_line(tcfg.threads)
    rdv = rendezvous.discover()
    device = rendezvous.init(rdv)
    dims = s.dims
    dims.validate(rdv.world_size, s.model_cfg, where=str(s.run.plan_file), seq_len=s.seq_len)
    rank = rdv.rank
    # Where each rank runs: one line in its own log, and every rank's host in the start record
    # (across nodes, a rank that is not where it should be shows here first).
    host = socket.gethostname()
    print(f"llmctl: rank {rank} of {rdv.world_size} (local rank {rdv.local_rank}) on {host}",
          file=sys.stderr, flush=True)
    hosts = [None] * rdv.world_size
    dist.all_gather_object(hosts, host)
    precision = resolve_precision(tcfg.precision, device)
    mesh = build_mesh(dims, device.type)
    torch.manual_seed(tcfg.seed)  # the same initial weights on every rank, and as one process
    model = Transformer(s.model_cfg, attention=cfg.kernels.attention, norm=cfg.kernels.norm)
    load_pretrained(model, s)  # `[init] from`: whole weights on every rank, before any sharding
    model.set_recompute(s.recompute, s.recompute_layers)
    model.set_fused_qkv(cfg.kernels.fused_qkv)
    runner = Runner(model, dims, mesh, device, lambda m: build_optimizer(m, cfg, device),
                    micro_batch=s.micro_batch, grad_accum=s.grad_accum,
                    grad_clip=cfg.optimizer.grad_clip, precision=precision)

    ckpt = Checkpointer(s.run.task_checkpoints(s.task), cfg.checkpoint.keep_last)
    if rank == 0:
        ckpt.clean_partial()
    dist.barrier()
    hashes = s.hashes()
    step = 0
    latest = ckpt.latest()
    guard = NonFiniteGuard(tcfg.nonfinite, tcfg.max_skipped_steps)
    if latest is not None:
        state = load_checkpoint(ckpt, latest, runner, hashes, verify, rank, rdv.world_size)
        step = int(state["step"])
        guard.skipped = int(state.get("skipped_steps", 0))
        sampler.load_state_dict(state["data"])
        if runner.scaler is not None and state.get("scaler"):
            runner.scaler.load_state_dict(state["scaler"])  # fp16: resume with the scale it had

    fpt = flops_per_token(s.model_cfg, s.seq_len)
    peak, peak_source = peak_flops(s.hardware_path, device)
    predicted = s.plan.predicted if s.plan is not None else None
    world = rdv.world_size
    gpu = GpuMonitor(device)
    from llmctl.track import training_tracker

    # Rank 0 alone writes the metrics, and so alone talks to the trackers.
    log = MetricsLog(s.run.metrics_file(s.task), tracker=training_tracker(s)) if rank == 0 else None

    def write(rec):
        if log is not None:
            log.write(rec)

    write({"kind": "start", "step": step, "max_steps": tcfg.max_steps, "model": s.model_cfg.name,
           "params": model.num_parameters(), "device": str(device), "precision": precision,
           "micro_batch": s.micro_batch, "grad_accum": s.grad_accum, "seq_len": s.seq_len,
           "tokens_per_step": s.tokens_per_step, "flops_per_token": fpt, "peak_flops": peak,
           "peak_source": peak_source, "checkpoint": str(latest) if latest else None,
           "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")), "data": str(s.data_dir),
           "data_position": sampler.position, "world_size": world, "launcher": rdv.source, "hosts": hosts,
           "threads": torch.get_num_threads(),
           "layout": {"dp": dims.dp, "tp": dims.tp, "pp": dims.pp, "vpp": dims.vpp, "mode": dims.dp_mode,
                      "zero_stage": dims.zero_stage, "schedule": dims.schedule,
                      "sequence_parallel": dims.sequence_parallel},
           "predicted_step_time_s": predicted.step_time_s if predicted else None,
           "predicted_mfu": predicted.mfu if predicted else None})

    def latest_name():
        p = ckpt.latest()
        return p.name if p is not None else None

    def halt(error) -> None:
        """Every rank stops at once; rank 0 says why, the others leave with the same code."""
        write({"kind": "end", "step": step, "reason": "nonfinite"})
        if rank == 0:
            log.close()
        rendezvous.shutdown()
        if rank == 0:
            raise error
        raise SystemExit(error.exit_code)

    def save(at: int) -> None:
        found = [None] * world  # every rank checks the weights it holds
        dist.all_gather_object(found, nonfinite_tensors(runner.local_parameters()))
        bad = [(f"{name} (rank {r})", n) for r, mine in enumerate(found) for name, n in mine]
        if bad:
            halt(weights_error(at, bad, latest_name()))
        save_checkpoint(ckpt, at, runner, {
            **hashes, "data": sampler.state_dict(), "scheduler": {"type": cfg.schedule.type, "step": at},
            "scaler": runner.scaler.state_dict() if runner.scaler is not None else None,
            "max_steps": tcfg.max_steps, "time": time.time(), "world_size": world,
            "layout": f"dp{dims.dp} tp{dims.tp} pp{dims.pp} {dims.dp_mode}",
            "skipped_steps": guard.skipped}, rank, world)

    preempt = Preemption().install()
    saved_at = step
    global_rows = s.micro_batch * s.grad_accum * dims.dp
    while step < tcfg.max_steps:
        lr = lr_at(step, peak=cfg.optimizer.lr, warmup=cfg.schedule.warmup_steps,
                   max_steps=tcfg.max_steps, kind=cfg.schedule.type, min_ratio=cfg.schedule.min_lr_ratio)
        t0 = time.perf_counter()
        x, y = sampler.next_batch(global_rows)
        loss, grad_norm = runner.step(torch.from_numpy(x), torch.from_numpy(y), lr)
        step_time = time.perf_counter() - t0
        step += 1
        # A signal may reach some ranks only: stop together, or the others hang in a collective.
        # The largest request wins: a preemption (USR1) on any rank is one for all.
        flag = torch.tensor(float(preempt.level))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        level = int(flag.item())
        stop = level > 0
        # The runner withheld the update if the loss or gradient norm (both reduced over all
        # ranks) was not finite; one more all-reduce makes sure every rank saw the same.
        flags = torch.tensor([0.0 if runner.finite else 1.0, 1.0 if runner.finite else 0.0])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        finite, split = not flags[0] > 0, bool(flags[0] > 0 and flags[1] > 0)
        last = step == tcfg.max_steps
        if step % tcfg.log_interval == 0 or last or stop or not finite:
            # Every rank measured the same synchronous step; rank 0's time is the step time.
            tps = s.tokens_per_step * dims.dp / max(step_time, 1e-9)
            write({"kind": "train", "step": step, "max_steps": tcfg.max_steps, "loss": loss, "lr": lr,
                   "grad_norm": grad_norm, "tokens_per_s": tps, "step_time_s": step_time,
                   # MFU per device: this step's model FLOPs over every rank's peak.
                   "mfu": (fpt * tps / (peak * world)) if peak else None,
                   "predicted_step_time_s": predicted.step_time_s if predicted else None,
                   "predicted_mfu": predicted.mfu if predicted else None,
                   "tokens": step * s.tokens_per_step * dims.dp, "epoch": round(sampler.epoch, 4),
                   "memory_gb": memory_gb(device), **gpu.read(), **({} if finite else {"skipped": True})})
        if split:
            halt(LlmctlError(f"step {step}: the ranks disagree on whether its loss and gradient norm are "
                             f"finite; stopped without writing a checkpoint", hint=HINT))
        if not finite:
            error = guard.after(step, loss, grad_norm, latest_name(), scaled=runner.scaler is not None)
            if error is not None:
                halt(error)
        if step % tcfg.eval_interval == 0 or last:
            # Every layout the same way: every rank takes part (FSDP2, ZeRO-3 and pipeline
            # stages need it), rank 0 logs.
            write({"kind": "eval", "step": step, "val_loss": runner.evaluate(val)})
        if step % cfg.checkpoint.interval_steps == 0 or last or stop:
            save(step)
            saved_at = step
        if stop:
            write({"kind": "end", "step": step, "reason": reason(level)})
            if rank == 0:
                log.close()
            code = finish(level, rank0=rank == 0)  # rank 0 requeues on a preemption
            rendezvous.shutdown()
            return code
    if saved_at != step:
        save(step)
    write({"kind": "end", "step": step, "reason": "finished"})
    if rank == 0:
        log.close()
        from llmctl.train.plot import plot_run

        plot_run(s.run.metrics_file(s.task), s.run.loss_plot(s.task))
    rendezvous.shutdown()
    train_store.close()
    val_store.close()
    return 0
