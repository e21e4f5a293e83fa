"""Plan file (TOML): the parallel layout the planner chose (or a person wrote), and what it predicts.

One function, `PlanFile._check`, holds the cross-field rules, so a plan is
validated the same way whether the solver or a person wrote it.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from llmctl.config.base import StrictModel, check_name
from llmctl.config.model import MAX_SEQ_LEN


class Parallelism(StrictModel):
    """How the model is split."""

    tp: int = Field(1, gt=0)
    """Tensor-parallel degree."""
    pp: int = Field(1, gt=0)
    """Pipeline-parallel degree."""
    dp: int = Field(1, gt=0)
    """Data-parallel degree."""
    cp: int = Field(1, gt=0)
    """Context-parallel degree."""
    vpp: int = Field(1, gt=0)
    """Virtual pipeline stages per rank (interleaved schedule when > 1)."""
    micro_batch: int = Field(1, gt=0)
    """Sequences per micro-batch."""
    grad_accum: int = Field(1, gt=0)
    """Micro-batches per optimizer step on each data-parallel rank."""
    zero_stage: int = Field(0, ge=0, le=3)
    """ZeRO stage over the data-parallel group."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation."""
    schedule: Literal["1f1b", "interleaved", "gpipe"] = "1f1b"
    """Pipeline schedule."""
    layers_per_stage: list[int] = []
    """Transformer layers on each pipeline stage (need not be equal)."""
    recompute_layers_per_stage: list[int] = []
    """Of those, how many are recomputed (full recomputation)."""


class StageMemory(StrictModel):
    """Memory of one pipeline stage, per GPU, in GB."""

    stage: int = Field(ge=0)
    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    other: float = 0.0
    total: float = 0.0


class Predicted(StrictModel):
    """What the cost model predicts for this layout."""

    step_time_s: float = Field(ge=0)
    tokens_per_s: float = Field(ge=0)
    tflops_per_gpu: float = Field(ge=0)
    mfu: float = Field(ge=0)
    memory_gb_per_gpu: float = Field(ge=0)
    """Memory of the fullest stage."""
    hw_tflops_per_gpu: float = Field(0.0, ge=0)
    """Hardware TFLOP/s per GPU: model FLOPs plus recomputation (Narayanan et al. 2021 eq. 3's accounting)."""
    memory_per_stage: list[StageMemory] = []
    time_breakdown_s: dict[str, float] = {}


class SolverInfo(StrictModel):
    """How the plan was found."""

    name: str
    status: str
    seconds: float = Field(ge=0)
    variables: int = Field(0, ge=0)
    constraints: int = Field(0, ge=0)


class PlanInputs(StrictModel):
    """What the plan was computed from."""

    model: str
    """Model config path."""
    hardware: Optional[str] = None
    """Hardware profile path."""
    site: Optional[str] = None
    """Site-config name."""
    train: Optional[str] = None
    """Training config path (global batch and sequence length came from it)."""
    model_sha256: Optional[str] = None
    hardware_sha256: Optional[str] = None
    train_sha256: Optional[str] = None
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(1, gt=0)
    seq_len: int = Field(2048, gt=0, le=MAX_SEQ_LEN)
    global_batch: int = Field(1, gt=0)
    """Sequences per optimizer step."""
    memory_gb: Optional[float] = Field(None, gt=0)
    """Memory per GPU the plan was made for."""
    device: Literal["gpu", "cpu"] = "gpu"
    """What the plan's devices are: GPUs, or CPU processes (a CPU-only hardware profile)."""
    strategy: Literal["auto", "manual"] = "auto"
    """auto: chosen by the solver; manual: a given layout, costed."""

    @field_validator("site")
    @classmethod
    def _site(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else check_name(v)
    attention: Literal["flash", "eager"] = "flash"
    """Attention kernel the memory model assumed: flash (fused, keeps no s² scores) or eager."""
    precision: Literal["bf16", "fp8"] = "bf16"
    """Training precision: bf16, or fp8 (the linear layers' GEMMs in FP8 through Transformer Engine, the rest bf16)."""
    tp_overlap: bool = False
    """Whether the time model overlapped tensor-parallel collectives with the GEMMs (Megatron-Core --tp-comm-overlap)."""
    dp_overlap: bool = True
    """Whether the time model reduced gradients beside the last micro-batch's backward (DDP/FSDP) or after it."""
    sequence_parallel: bool = True
    """Whether norms, dropout and residual adds were split over the tensor-parallel group (time and memory)."""
    engine: Literal["megatron", "deepspeed", "fsdp"] = "megatron"
    """The framework whose mechanisms the time model costed: megatron (Megatron-LM/Core; llmctl's pipeline and FSDP2), deepspeed (PipelineEngine, DeepSpeed ZeRO: llmctl's ZeRO with tp = pp = 1) or fsdp (PyTorch FSDP)."""


class Alternative(StrictModel):
    """A runner-up plan."""

    parallelism: Parallelism
    predicted: Predicted


class PlanFile(StrictModel):
    """A parallelism plan (TOML or JSON)."""

    version: int = 1
    """Plan file format version."""
    inputs: PlanInputs
    """What the plan was computed from."""
    parallelism: Parallelism
    """The chosen layout."""
    predicted: Optional[Predicted] = None
    """The cost model's prediction."""
    alternatives: list[Alternative] = []
    """The next-best plans."""
    solver: Optional[SolverInfo] = None
    """Solver statistics."""

    @model_validator(mode="after")
    def _check(self) -> "PlanFile":
        validate_layout(self.parallelism, self.inputs)
        return self


def validate_layout(p: Parallelism, inputs: PlanInputs) -> None:
    """The cross-field rules of a layout; raises ValueError spelling every factor out."""
    gpus = inputs.nodes * inputs.gpus_per_node
    if p.tp * p.pp * p.dp * p.cp != gpus:
        raise ValueError(
            f"tp*pp*dp*cp = {p.tp}*{p.pp}*{p.dp}*{p.cp} = {p.tp * p.pp * p.dp * p.cp} "
            f"!= nodes*gpus_per_node = {inputs.nodes}*{inputs.gpus_per_node} = {gpus}")
    if p.micro_batch * p.grad_accum * p.dp != inputs.global_batch:
        raise ValueError(
            f"micro_batch*grad_accum*dp = {p.micro_batch}*{p.grad_accum}*{p.dp} = "
            f"{p.micro_batch * p.grad_accum * p.dp} != global_batch = {inputs.global_batch}")
    if p.layers_per_stage and len(p.layers_per_stage) != p.pp * p.vpp:
        raise ValueError(
            f"layers_per_stage has {len(p.layers_per_stage)} entries, expected pp*vpp = {p.pp * p.vpp}")
    if p.recompute_layers_per_stage:
        if len(p.recompute_layers_per_stage) != len(p.layers_per_stage):
            raise ValueError("recompute_layers_per_stage and layers_per_stage differ in length")
        for i, (r, n) in enumerate(zip(p.recompute_layers_per_stage, p.layers_per_stage)):
            if not 0 <= r <= n:
                raise ValueError(f"stage {i}: recomputes {r} of {n} layers")
    if p.vpp > 1 and p.schedule != "interleaved":
        raise ValueError(f"vpp = {p.vpp} needs schedule = 'interleaved' (got {p.schedule!r})")
