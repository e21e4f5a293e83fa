"""Train a tiny llama for a few steps under one layout and write each rank's result.

    python tests/integration/parallel_worker.py OUT_DIR LAYOUTS_JSON     # under torchrun, srun, mpirun
    python tests/integration/parallel_worker.py OUT_DIR '{"single": {}}' --single   # the reference

LAYOUTS_JSON maps a name to ParallelDims fields; the layouts run one after the
other in the same process group (one start-up for all). Every rank writes
OUT_DIR/<name>.rank<R>.pt: the losses and gradient norms per step and its parameters,
unsharded, under the full model's names. The batches are random tokens from a
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


def main(out: str, layouts: dict, single: bool) -> None:
    from llmctl.parallel import rendezvous

    device = None if single else rendezvous.init(rendezvous.discover())
    for name, layout in layouts.items():
        run_one(out, name, layout, device)
    if not single:
        rendezvous.shutdown()


def run_one(out: str, name: str, layout: dict, device) -> None:
    steps = int(layout.pop("steps", STEPS))
    import torch

    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer
    from llmctl.parallel import rendezvous
    from llmctl.parallel.dims import ParallelDims, build_mesh
    from llmctl.parallel.runner import Runner
    from llmctl.train.trainer import build_optimizer

    torch.set_num_threads(1)
    cfg = ModelConfig(**MODEL)
    opt = types.SimpleNamespace(optimizer=types.SimpleNamespace(
        type="adamw", lr=1e-2, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1))
    dims = ParallelDims(**layout)
    if device is None:
        rank, mesh, device = 0, None, torch.device("cpu")
    else:
        rdv = rendezvous.discover()
        rank = rdv.rank
        dims.validate(rdv.world_size, cfg)
        mesh = build_mesh(dims, device.type)
    torch.manual_seed(0)
    model = Transformer(cfg)
    grad_accum = GLOBAL // (MICRO * dims.dp)
    runner = Runner(model, dims, mesh, device, lambda m: build_optimizer(m, opt, device),
                    micro_batch=MICRO, grad_accum=grad_accum, grad_clip=1.0)
    gen = torch.Generator().manual_seed(1)
    losses, norms = [], []
    import time

    times = []
    for step in range(steps):
        tokens = torch.randint(0, cfg.vocab_size, (GLOBAL, SEQ + 1), generator=gen)
        t0 = time.perf_counter()
        loss, norm = runner.step(tokens[:, :-1], tokens[:, 1:], lr=1e-2)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        norms.append(norm)
    state = runner.full_state_dict()
    torch.save({"losses": losses, "norms": norms, "params": state, "step_s": times}, Path(out) / f"{name}.rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), "--single" in sys.argv)
