"""Training config (TOML): model, optimizer, parallel layout, data, schedule, checkpoints.

The seed's sections `[model]`, `[optimizer]`, `[parallel]` keep their keys; `[data]`,
`[schedule]`, `[checkpoint]` and `[training]` complete a run. Precedence, stated
once for all of llmctl: command-line flag > job file > site-config > defaults.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import ConfigDict, Field, model_validator

from llmctl.config.base import Name, StrictModel
from llmctl.config.model import MAX_SEQ_LEN
from llmctl.config.tracking import Tracking


class ModelRef(StrictModel):
    """Which model to train."""

    name: Name
    """Model name (matches the model config's `name`)."""
    config_file: Optional[str] = None
    """Path to the model config JSON, relative to the project folder (not with `[init] from`,
    which brings its own)."""


class Init(StrictModel):
    """Where the weights start: random (the default), or pretrained (fine-tuning)."""

    model_config = ConfigDict(**StrictModel.model_config, populate_by_name=True, serialize_by_alias=True)

    from_: Optional[str] = Field(None, alias="from")
    """An artifact folder (`llmctl export`), a Hugging Face folder (llama, mistral, qwen2,
    gpt2) or an imported llmctl folder (`export --artifact`: model.json + model.safetensors),
    relative to the project folder. The model config comes from it, and its weights are
    the starting point (a run resumed from a checkpoint loads the checkpoint instead)."""


class Optimizer(StrictModel):
    """The optimizer."""

    type: Literal["adamw", "adam", "sgd"] = "adamw"
    """Optimizer type."""
    lr: float = Field(3e-4, gt=0, le=1e30)
    """Peak learning rate (at most 1e30: above it, AdamW's float32 step size lr / bias correction overflows)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas."""
    eps: float = Field(1e-8, gt=0)
    """Adam epsilon."""
    weight_decay: float = Field(0.1, ge=0)
    """Decoupled weight decay."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (0 = off)."""
    fused: Union[bool, Literal["auto"]] = "auto"
    """torch's fused optimizer step (one kernel over all parameters): `auto` = fused when the
    parameters are on a CUDA GPU, torch's default otherwise; `true` = fused on any device
    torch has the kernel for (CUDA, CPU); `false` = `foreach` (batched per-tensor ops)."""

    @model_validator(mode="after")
    def _betas(self) -> "Optimizer":
        for b in self.betas:
            if not 0 <= b < 1:
                raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        return self


class Parallel(StrictModel):
    """Parallel layout; with strategy 'auto' the plan decides what is not given."""

    strategy: Literal["auto", "manual", "ddp", "fsdp", "deepspeed"] = "auto"
    """auto: take the plan; manual: use the degrees below; or force a data-parallel engine."""
    zero_stage: int = Field(0, ge=0, le=3)
    """ZeRO stage (0-3)."""
    micro_batch_size: int = Field(1, gt=0)
    """Sequences per micro-batch per GPU."""
    global_batch_size: int = Field(8, gt=0)
    """Sequences per optimizer step over all data-parallel ranks."""
    tp: int = Field(1, gt=0)
    """Tensor-parallel degree."""
    pp: int = Field(1, gt=0)
    """Pipeline-parallel degree."""
    cp: int = Field(1, gt=0)
    """Context-parallel degree."""
    sequence_parallel: bool = True
    """With tp > 1, split norms and the residual stream along the sequence (Megatron-style SP;
    the planner's memory model assumes it); false keeps them replicated between blocks."""


class DataRef(StrictModel):
    """Training data."""

    config_file: Optional[str] = None
    """Data config TOML (what `llmctl data prepare` reads)."""
    seq_len: int = Field(2048, gt=0, le=MAX_SEQ_LEN)
    """Tokens per training sequence."""


class Schedule(StrictModel):
    """Learning-rate schedule."""

    type: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay shape after warm-up."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warm-up steps."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a fraction of the peak."""


class Checkpoint(StrictModel):
    """Checkpointing."""

    dir: str = "checkpoints"
    """Checkpoint folder (relative to the project, or absolute)."""
    interval_steps: int = Field(1000, gt=0)
    """Save every N steps (and on preemption)."""
    keep_last: int = Field(3, gt=0)
    """Checkpoints to keep."""


class Kernels(StrictModel):
    """Which kernel implementations the model uses (built-in, or added by a plugin)."""

    attention: str = "sdpa"
    """Attention kernel: `sdpa` (torch's scaled_dot_product_attention: flash on GPU), `math`, or a plugin's."""
    norm: Optional[str] = None
    """Normalisation kernel (default: the model's `norm`, i.e. `layernorm` or `rmsnorm`), or a plugin's."""
    fused_qkv: bool = False
    """One matmul for each block's q, k and v projections (GQA-aware split) instead of three.
    Parameter and checkpoint names stay wq/wk/wv (exports, eval and serving unchanged);
    refused with tensor parallelism (tp > 1) and DeepSpeed ZeRO-3."""


class Training(StrictModel):
    """The run itself."""

    max_steps: int = Field(1000, gt=0)
    """Optimizer steps to train."""
    seed: int = Field(1234, ge=0)
    """Seed for parameters, data order and dropout."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU."""
    eval_interval: int = Field(500, gt=0)
    """Validation loss every N steps."""
    eval_batches: int = Field(20, gt=0)
    """Batches per validation."""
    log_interval: int = Field(10, gt=0)
    """Metrics line every N steps."""
    compile: Union[bool, Literal["auto"]] = "auto"
    """Compile the model with torch.compile (slower start, faster steps). `auto` = on for a
    one-process run on a CUDA GPU, off on a CPU and with several ranks (provisional: to be
    confirmed by `make gpu-check`'s measurement); `true` compiles on CPU too, and is refused
    with several ranks (not supported there yet)."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN or infinite loss or gradient norm: `stop` the run at that step (exit 2, no checkpoint
    written, `latest` unchanged), or `skip` the step like a loss scaler (weights and optimizer
    state untouched) up to `max_skipped_steps` times. The step is never applied either way."""
    max_skipped_steps: int = Field(10, ge=0)
    """With nonfinite = "skip": steps a run may skip in all (counted across restarts); one more stops it."""
    threads: Optional[int] = Field(None, ge=1, le=4096)
    """torch intra-op threads per rank (default: OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK shared by
    the ranks of one task, else the CPU affinity mask shared by this node's ranks, capped by their
    share of the cgroup quota; never all cores of a shared node; llmctl/hw/threads.py)."""


class TrainConfig(StrictModel):
    """A training config (TOML)."""

    model: ModelRef
    """The model to train."""
    init: Optional[Init] = None
    """Starting weights: `from` a pretrained model to fine-tune it (default: random)."""
    optimizer: Optimizer = Optimizer()
    """Optimizer settings."""
    parallel: Parallel = Parallel()
    """Parallel layout."""
    data: DataRef = DataRef()
    """Training data."""
    schedule: Schedule = Schedule()
    """Learning-rate schedule."""
    checkpoint: Checkpoint = Checkpoint()
    """Checkpointing."""
    training: Training = Training()
    """Run length, seed, precision, logging."""
    kernels: Kernels = Kernels()
    """Attention and normalisation kernels."""
    tracking: Optional[Tracking] = None
    """Experiment tracking (TensorBoard, MLflow, W&B) besides metrics.jsonl."""

    @property
    def init_from(self) -> Optional[str]:
        """The pretrained model the run starts from (None: random initialisation)."""
        return self.init.from_ if self.init is not None else None

    @model_validator(mode="after")
    def _batches(self) -> "TrainConfig":
        if (self.model.config_file is None) == (self.init_from is None):
            raise ValueError("give exactly one of model.config_file (train from scratch) and init.from "
                             "(fine-tune a pretrained model, whose config it brings)")
        p = self.parallel
        if p.global_batch_size % p.micro_batch_size:
            raise ValueError(
                f"parallel.global_batch_size ({p.global_batch_size}) is not a multiple of "
                f"parallel.micro_batch_size ({p.micro_batch_size})")
        if self.schedule.warmup_steps > self.training.max_steps:
            raise ValueError(
                f"schedule.warmup_steps ({self.schedule.warmup_steps}) exceeds "
                f"training.max_steps ({self.training.max_steps})")
        return self
