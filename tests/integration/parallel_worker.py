"""Train a tiny llama for a few steps under one layout and write each rank's result.

    python tests/integration/parallel_worker.py OUT_DIR LAYOUTS_JSON     # under torchrun, srun, mpirun
    python tests/integration/parallel_worker.py OUT_DIR '{"single": {}}' --single   # the reference

LAYOUTS_JSON maps a name to ParallelDims fields (plus the run's own: steps, precision,
fixed_batch, loss_scale for fp16, val=false to skip validation; save=true to write a checkpoint
into OUT_DIR/ckpt-<name>/ after the last step, as the trainer's layout writes it; resume=<name>
to start from OUT_DIR/ckpt-<name>/ after `start` steps' batches); the layouts run one after
the other in the same process group (one start-up for all). Every rank writes
OUT_DIR/<name>.rank<R>.pt: the losses, gradient norms and validation losses per step and
its parameters, unsharded, under the full model's names. The batches are random tokens from a
fixed seed, the same on every rank (the runner takes each rank's share).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

MODEL = {"name": "llama-par", "template": "llama", "layers": 4, "hidden": 32, "ffn": 64, "heads": 4,
         "kv_heads": 2, "vocab_size": 128, "max_seq_len": 16, "tie_embeddings": False}
SEQ, MICRO, STEPS, GLOBAL = 16, 2, 3, 8
VAL_ROWS = (3, 1)


def main(out: str, layouts: dict, single: bool) -> None:
    from llmctl.parallel import rendezvous

    device = None if single else rendezvous.init(rendezvous.discover())
    for name, layout in layouts.items():
        run_one(out, name, layout, device)
    if not single:
        rendezvous.shutdown()


def run_one(out: str, name: str, layout: dict, device) -> None:
    steps = int(layout.pop("steps", STEPS))
    layout_val = bool(layout.pop("val", True))  # benchmarks time the steps only
    precision = layout.pop("precision", "fp32")
    # The same batch every step: a model that trains must then lower its loss.
    fixed_batch = bool(layout.pop("fixed_batch", False))
    loss_scale = float(layout.pop("loss_scale", 2.0 ** 16))  # fp16's initial loss scale
    save = bool(layout.pop("save", False))
    resume = layout.pop("resume", None)
    start = int(layout.pop("start", 0))
    import torch

    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer
    from llmctl.parallel import rendezvous
    from llmctl.parallel.dims import ParallelDims, build_mesh
    from llmctl.parallel.runner import Runner
    from llmctl.train.optim import build_optimizer

    torch.set_num_threads(1)
    cfg = ModelConfig(**MODEL)
    opt = types.SimpleNamespace(optimizer=types.SimpleNamespace(
        type="adamw", lr=1e-2, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1, fused="auto"))
    dims = ParallelDims(**layout)
    if device is None:
        rank, mesh, device = 0, None, torch.device("cpu")
    else:
        rdv = rendezvous.discover()
        rank = rdv.rank
        dims.validate(rdv.world_size, cfg, seq_len=SEQ)
        mesh = build_mesh(dims, device.type)
    torch.manual_seed(0)
    model = Transformer(cfg)
    grad_accum = GLOBAL // (MICRO * dims.dp)
    runner = Runner(model, dims, mesh, device, lambda m: build_optimizer(m, opt, device),
                    micro_batch=MICRO, grad_accum=grad_accum, grad_clip=1.0, precision=precision,
                    init_loss_scale=loss_scale)
    gen = torch.Generator().manual_seed(1)
    # Validation batches of other sizes than the training micro-batch (as the trainer's last one).
    val = [torch.randint(0, cfg.vocab_size, (rows, SEQ + 1), generator=torch.Generator().manual_seed(2 + i))
           for i, rows in enumerate(VAL_ROWS)]
    val = [(v[:, :-1], v[:, 1:]) for v in val]
    losses, norms, val_losses = [], [], []
    import time

    from llmctl.parallel import checkpoint as sharded

    if resume:
        sharded.load_into(Path(out) / f"ckpt-{resume}", runner, cfg, rank)
    for _ in range(start):  # the batches the checkpointed run already trained on
        torch.randint(0, cfg.vocab_size, (GLOBAL, SEQ + 1), generator=gen)
    times = []
    for step in range(steps):
        if step == 0 or not fixed_batch:
            tokens = torch.randint(0, cfg.vocab_size, (GLOBAL, SEQ + 1), generator=gen)
        t0 = time.perf_counter()
        loss, norm = runner.step(tokens[:, :-1], tokens[:, 1:], lr=1e-2)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        norms.append(norm)
        if layout_val:
            val_losses.append(runner.evaluate(val))
    if save:
        folder = Path(out) / f"ckpt-{name}"
        if mesh is None:  # as the one-process trainer writes it
            from safetensors.torch import save_model

            folder.mkdir(parents=True, exist_ok=True)
            save_model(runner.state_module, str(folder / "model.safetensors"))
            torch.save(runner.optimizer.state_dict(), folder / "optimizer.pt")
        else:
            import torch.distributed as dist

            sharded.save(folder, runner, rank, dist.get_world_size())
            dist.barrier()
    state = runner.full_state_dict()
    scale = runner.scaler.get_scale() if runner.scaler is not None else None
    torch.save({"losses": losses, "norms": norms, "val": val_losses, "params": state, "step_s": times,
                "loss_scale": scale},
               Path(out) / f"{name}.rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), "--single" in sys.argv)
