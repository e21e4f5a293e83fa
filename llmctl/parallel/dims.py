"""The plan's degrees, checked against the world and the model, and the device mesh they span.

Mesh order is (pp, dp, tp): tensor-parallel ranks are neighbours (one node,
fastest links), pipeline stages the farthest apart, as Megatron-LM orders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from llmctl.errors import LlmctlError

DP_MODES = ("ddp", "fsdp", "zero")


@dataclass
class ParallelDims:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    dp_mode: str = "ddp"  # ddp | fsdp | zero (DeepSpeed; zero_stage 1-3)
    zero_stage: int = 0
    sequence_parallel: bool = False  # Megatron-style SP; only takes effect with tp > 1
    schedule: str = "1f1b"
    layers_per_stage: list[int] = field(default_factory=list)
    recompute_layers_per_stage: list[int] = field(default_factory=list)

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    def validate(self, world_size: int, model_cfg=None, where: str = "plan",
                 seq_len: Optional[int] = None) -> None:
        """Every problem at once, each factor spelled out."""
        errs = []
        if self.tp > 1 and self.sequence_parallel and seq_len is not None and seq_len % self.tp:
            # Each tensor-parallel rank holds an equal slice of the sequence between blocks.
            errs.append(f"sequence parallelism needs the sequence length ({seq_len}) divisible by tp "
                        f"({self.tp}); change data.seq_len or set parallel.sequence_parallel = false")
        if self.world != world_size:
            errs.append(f"dp ({self.dp}) x tp ({self.tp}) x pp ({self.pp}) = {self.world}, "
                        f"but {world_size} ranks were started")
        if self.dp_mode not in DP_MODES:
            errs.append(f"data-parallel mode {self.dp_mode!r} is not one of {', '.join(DP_MODES)}")
        if self.dp_mode == "zero" and (self.tp > 1 or self.pp > 1):
            errs.append("DeepSpeed ZeRO runs with tp = pp = 1 here; use FSDP2 (zero_stage 3 without "
                        "DeepSpeed) to combine sharding with tensor parallelism")
        if self.pp > 1 and self.dp_mode == "fsdp" and self.dp > 1:
            errs.append("pp > 1 with FSDP2 data parallelism is not supported yet; use DDP (zero_stage 0)")
        if model_cfg is not None:
            if self.tp > 1:
                if model_cfg.heads % self.tp or model_cfg.kv_heads % self.tp:
                    errs.append(f"tp ({self.tp}) must divide heads ({model_cfg.heads}) and kv_heads "
                                f"({model_cfg.kv_heads})")
                if model_cfg.ffn % self.tp:
                    errs.append(f"tp ({self.tp}) must divide ffn ({model_cfg.ffn})")
            stages = self.pp * self.vpp
            if self.pp > 1:
                if model_cfg.tie_embeddings:
                    errs.append("pp > 1 needs untied embeddings (tie_embeddings = false): the first and "
                                "last stages would share a weight")
                split = self.layers_per_stage or even_split(model_cfg.layers, stages)
                if len(split) != stages or sum(split) != model_cfg.layers or min(split) < 1:
                    errs.append(f"layers_per_stage {split} must be {stages} positive numbers summing to "
                                f"the model's {model_cfg.layers} layers")
        if self.dp_mode == "ddp" and self.tp > 1 and self.dp > 1 and self.pp == 1:
            errs.append("tp > 1 with dp > 1 needs FSDP2 (DDP does not take tensor-parallel parameters)")
        if errs:
            raise LlmctlError(f"{where}: " + "; ".join(errs))

    def stage_layers(self, layers: int) -> list[int]:
        return self.layers_per_stage or even_split(layers, self.pp * self.vpp)

    @classmethod
    def from_plan(cls, par, dp_mode: Optional[str] = None) -> "ParallelDims":
        """From a plan's [parallelism]: zero_stage 0 -> DDP, 1-3 -> DeepSpeed unless dp_mode says fsdp."""
        mode = dp_mode or ("zero" if par.zero_stage else "ddp")
        if mode == "zero" and (par.tp > 1 or par.pp > 1) and par.zero_stage == 3:
            mode = "fsdp"  # FSDP2 is ZeRO-3 that composes with TP
        if mode == "ddp" and par.tp > 1 and par.dp > 1 and par.pp == 1:
            mode = "fsdp"  # DDP does not take tensor-parallel (DTensor) parameters
        return cls(dp=par.dp, tp=par.tp, pp=par.pp, vpp=par.vpp, dp_mode=mode, zero_stage=par.zero_stage,
                   sequence_parallel=par.tp > 1, schedule=par.schedule,
                   layers_per_stage=list(par.layers_per_stage),
                   recompute_layers_per_stage=list(par.recompute_layers_per_stage))


def even_split(layers: int, stages: int) -> list[int]:
    """As even as possible, the extra layers on the middle stages (the ends hold embeddings and head)."""
    base, extra = divmod(layers, stages)
    out = [base] * stages
    order = sorted(range(stages), key=lambda i: abs(i - (stages - 1) / 2))
    for i in order[:extra]:
        out[i] += 1
    return out


def build_mesh(dims: ParallelDims, device_type: str):
    """A 3-D DeviceMesh named (pp, dp, tp); every rank calls this."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (dims.pp, dims.dp, dims.tp), mesh_dim_names=("pp", "dp", "tp"))
