"""The speed switches of a training run, each honoured or refused in one place.

`training.compile` (torch.compile of the model), `kernels.fused_qkv` (one GEMM for
q, k and v), `optimizer.fused` (torch's fused optimizer kernel), and the precision
(bf16 autocast on a GPU). Activation recomputation comes from the plan
(`Transformer.set_recompute`). `make gpu-check` measures them on a GPU; what each
does is in docs/performance.md. Nothing here imports torch at module level.
"""

from __future__ import annotations

from typing import Any, Union

from llmctl.errors import LlmctlError


def compile_enabled(setting: Union[bool, str], device: Any, world: int = 1) -> bool:
    """Whether to torch.compile the model: `auto` = on for one process on a CUDA GPU.

    The CUDA default is provisional until gpu-check has measured it faster on a GPU.
    Several ranks: `auto` means off and `true` is refused (the multi-rank runner does not
    compile yet), so no setting is silently ignored."""
    if setting == "auto":
        return world == 1 and device is not None and device.type == "cuda"
    if setting and world > 1:
        raise LlmctlError(f"training.compile = true is not supported with {world} ranks yet",
                          hint='set training.compile = "auto" or false for multi-rank runs')
    return bool(setting)


def check_fused_qkv(on: bool, dims: Any = None) -> None:
    """Refuse fused_qkv where the layout shards or gathers wq/wk/wv as separate modules."""
    if not on or dims is None:
        return
    if dims.tp > 1:
        raise LlmctlError(f"kernels.fused_qkv is not supported with tensor parallelism (tp = {dims.tp}): "
                          "the tensor-parallel plan shards wq, wk and wv as separate modules",
                          hint="set kernels.fused_qkv = false, or tp = 1")
    if dims.dp_mode == "zero" and dims.zero_stage == 3:
        raise LlmctlError("kernels.fused_qkv is not supported with DeepSpeed ZeRO-3, which gathers each "
                          "module's weights only when that module itself runs",
                          hint="set kernels.fused_qkv = false, or use fsdp / a lower zero stage")


def optimizer_options(setting: Union[bool, str], device: Any) -> dict[str, bool]:
    """torch.optim keyword arguments for `optimizer.fused`.

    auto: fused on a CUDA GPU, else torch's default (a per-parameter loop on a CPU, kept
    so that CPU runs and their recorded losses do not change); true: fused; false: foreach."""
    if setting == "auto":
        return {"fused": True} if device.type == "cuda" else {}
    return {"fused": True} if setting else {"foreach": True}


def make_step(model: Any, optimizer: Any, device: Any, precision: str, compiled: bool,
              grad_clip: float = 1.0):
    """One training step as the trainer runs it (autocast, backward, clip, optimizer step,
    the one host sync), for benchmarks: step(x, y) -> loss. No accumulation, no guards."""
    import contextlib

    import torch

    if precision == "fp16":
        raise ValueError("make_step runs bf16 or fp32 (fp16 needs the trainer's loss scaler)")
    dtype = {"bf16": torch.bfloat16}.get(precision)
    fwd = torch.compile(model) if compiled else model
    clip = grad_clip if grad_clip > 0 else float("inf")

    def step(x, y) -> float:
        ctx = torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            loss = fwd(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        loss_v, _ = torch.stack([loss.detach().float(), norm.float()]).tolist()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_v

    return step
