"""DeepSpeed ZeRO stage 1, 2 or 3 (Rajbhandari et al. 2020) around the model.

Our own torch optimizer goes in (AdamW with the trainer's parameter groups), so
DeepSpeed compiles no fused Adam; its shared-memory communication op is turned
off on CPUs, where it would compile for ~22 s at first start and gloo does the
job. Gradient accumulation and clipping are DeepSpeed's (`engine.backward`
scales by 1/grad_accum; `engine.step` steps at the accumulation boundary).
"""

from __future__ import annotations

import os


def ds_config(stage: int, micro_batch: int, grad_accum: int, dp: int, grad_clip: float,
              precision: str) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * dp,
        "zero_optimization": {"stage": stage,
                              # so that a stage-3 checkpoint also yields whole weights
                              "stage3_gather_16bit_weights_on_model_save": stage == 3},
        "gradient_clipping": grad_clip if grad_clip > 0 else 0.0,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif precision == "fp16":
        cfg["fp16"] = {"enabled": True}
    return cfg


def initialize(model, optimizer, config: dict, device):
    """The DeepSpeed engine; the process group must exist (rendezvous.init)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    import deepspeed
    import deepspeed.ops

    if device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                           dist_init_required=False)
    return engine
