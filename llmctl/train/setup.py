"""Everything a training run needs, read from its run folder and checked before step 0.

The run folder holds the resolved training config (`config.toml`, or the file
$LLMCTL_CONFIG names for an array task) and, if the job came from a plan,
`plan.toml`. Relative paths in them (the model config, the data config, the
hardware profile) are relative to the project folder the job was launched from:
that is $LLMCTL_PROJECT_DIR when set, else the nearest of the run folder and its
parents in which the path exists (run folders live in <project>/runs/ by default).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import ConfigError, LlmctlError
from llmctl.jobs.rundir import RunDir


def _candidates(run: RunDir) -> list[Path]:
    out = []
    if os.environ.get("LLMCTL_PROJECT_DIR"):
        out.append(Path(os.environ["LLMCTL_PROJECT_DIR"]))
    out += [run.path, *run.path.parents]
    return out


def locate(rel: str, starts: list[Path], what: str, where: str, key: str) -> Path:
    """`rel` itself if absolute, else under the first folder of `starts` that has it."""
    p = Path(rel).expanduser()
    if p.is_absolute():
        if not p.exists():
            raise ConfigError(where, [f"{key}: {what} {p} not found"])
        return p
    for base in starts:
        if (base / p).exists():
            return (base / p).absolute()
    raise ConfigError(where, [f"{key}: {what} {rel!r} not found in {starts[0]} or any folder above it"],
                      hint="set LLMCTL_PROJECT_DIR to the project folder, or use absolute paths")


def short_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunSetup:
    run: RunDir
    task: str  # array task index ("" when not an array)
    config_path: Path
    cfg: Any  # TrainConfig
    model_cfg: Any  # ModelConfig
    model_path: Path
    plan: Any  # PlanFile or None
    data_dir: Path
    data_meta: dict
    hardware_path: Optional[Path]
    seq_len: int
    micro_batch: int
    grad_accum: int
    recompute: str
    recompute_layers: Optional[int]
    dims: Any = None  # llmctl.parallel.dims.ParallelDims
    init_path: Optional[Path] = None  # `[init] from`: the pretrained model the run starts from

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.seq_len

    def hashes(self) -> dict[str, str]:
        """What a checkpoint must match: the model, and the settings that shape the run."""
        c = self.cfg
        mc = self.model_cfg
        return {
            "model_hash": short_hash(mc.to_data()),
            "config_hash": short_hash({
                "model": mc.to_data(), "optimizer": c.optimizer.to_data(),
                "schedule": c.schedule.to_data(), "seed": c.training.seed,
                # The global batch, not its split: a run may resume with another layout.
                "batch": [self.micro_batch * self.grad_accum * (self.dims.dp if self.dims else 1),
                          self.seq_len],
                "data": [self.data_meta["fingerprint"], self.data_meta["tokenizer"]["sha256"]],
                **({"init": c.init_from} if c.init_from else {})}),
            "model_name": mc.name,
            "model_shape": f"{mc.template}, {mc.layers} layers, hidden {mc.hidden}, "
                           f"{mc.heads} heads, vocab {mc.vocab_size}",
        }


def pretrained_config(path: Path):
    """The ModelConfig of a pretrained folder (no torch needed)."""
    from llmctl.config.base import load_config
    from llmctl.config.model import ModelConfig

    if (path / "model.json").is_file():
        return load_config(path / "model.json", ModelConfig)
    if (path / "config.json").is_file():
        from llmctl.export.families import read_hf_config

        cfg, cj = read_hf_config(path)
        if cj.get("quantization_config"):
            raise LlmctlError(f"{path}: a quantized artifact; fine-tune from full-precision weights",
                              hint="export the checkpoint again without --quantize")
        return cfg
    raise LlmctlError(f"{path}: not a pretrained model folder (no config.json or model.json)",
                      hint="pass an artifact (`llmctl export`), a Hugging Face folder, or an "
                           "`llmctl export --artifact` import")


def load_run(run_dir: str | Path) -> RunSetup:
    """Read and check the run folder's config, plan, model and data."""
    from llmctl.config.base import load_config
    from llmctl.config.data import DataConfig
    from llmctl.config.model import ModelConfig
    from llmctl.config.plan import PlanFile
    from llmctl.config.train import TrainConfig
    from llmctl.data.shards import read_meta

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise LlmctlError(f"{run.path}: run folder not found")
    task = os.environ.get("LLMCTL_ARRAY_INDEX", "")
    config_path = Path(os.environ.get("LLMCTL_CONFIG") or run.config_file)
    if not config_path.is_absolute():
        config_path = run.path / config_path
    cfg = load_config(config_path, TrainConfig)
    where = str(config_path)
    starts = _candidates(run)

    init_path = None
    if cfg.init_from:  # fine-tuning: the pretrained folder brings the model config
        init_path = model_path = locate(cfg.init_from, starts, "pretrained model", where, "init.from")
        model_cfg = pretrained_config(init_path)
    else:
        model_path = locate(cfg.model.config_file, starts, "model config", where, "model.config_file")
        model_cfg = load_config(model_path, ModelConfig)

    plan = load_config(run.plan_file, PlanFile) if run.plan_file.is_file() else None
    hardware_path = None
    if plan is not None and plan.inputs.hardware:
        try:
            hardware_path = locate(plan.inputs.hardware, starts, "hardware profile", str(run.plan_file),
                                   "inputs.hardware")
        except ConfigError:
            hardware_path = None  # only MFU needs it; the run goes on without

    if not cfg.data.config_file:
        raise ConfigError(where, ["data.config_file: required to train (the data config that "
                                  "`llmctl data prepare` read)"])
    data_cfg_path = locate(cfg.data.config_file, starts, "data config", where, "data.config_file")
    data_cfg = load_config(data_cfg_path, DataConfig)
    # The data folder is relative to the project folder `llmctl data prepare` ran in.
    out_rel = data_cfg.output.dir
    data_starts = starts + [data_cfg_path.parent, *data_cfg_path.parent.parents]
    try:
        data_dir = locate(str(Path(out_rel) / "meta.json"), data_starts, "prepared data", str(data_cfg_path),
                          "output.dir").parent
    except ConfigError:
        raise LlmctlError(f"{data_cfg_path}: output.dir {out_rel!r}: no prepared data found",
                          hint=f"run `llmctl data prepare --config {data_cfg_path}` in the project folder") from None
    meta = read_meta(data_dir)

    vocab = int(meta["tokenizer"]["vocab_size"])
    if vocab > model_cfg.vocab_size:
        raise LlmctlError(
            f"{model_path}: vocab_size {model_cfg.vocab_size} is smaller than the tokenizer's "
            f"vocabulary of {vocab} ({data_dir / 'tokenizer.json'})",
            hint=f"set vocab_size >= {vocab} in the model config (a multiple of 64 is fastest), "
                 "or prepare the data with a smaller tokenizer.vocab_size")
    seq_len = cfg.data.seq_len
    if seq_len > model_cfg.max_seq_len:
        raise ConfigError(where, [f"data.seq_len: {seq_len} exceeds the model's max_seq_len "
                                  f"{model_cfg.max_seq_len} ({model_path})"])

    micro = plan.parallelism.micro_batch if plan is not None else cfg.parallel.micro_batch_size
    dims = parallel_dims(plan, run.plan_file, model_cfg, cfg.parallel.sequence_parallel, cfg.data.seq_len)
    global_batch = cfg.parallel.global_batch_size
    if global_batch % (micro * dims.dp):
        raise ConfigError(where, [f"parallel.global_batch_size ({global_batch}) is not a multiple of "
                                  f"micro-batch ({micro}) x data-parallel ranks ({dims.dp})"])
    grad_accum = global_batch // (micro * dims.dp)
    recompute, layers = "none", None
    if plan is not None:
        recompute = plan.parallelism.recompute
        if recompute == "full" and plan.parallelism.recompute_layers_per_stage and dims.pp == 1:
            layers = sum(plan.parallelism.recompute_layers_per_stage)
    return RunSetup(run=run, task=task, config_path=config_path, cfg=cfg, model_cfg=model_cfg,
                    model_path=model_path, plan=plan, data_dir=data_dir, data_meta=meta,
                    hardware_path=hardware_path, seq_len=seq_len, micro_batch=micro,
                    grad_accum=grad_accum, recompute=recompute, recompute_layers=layers, dims=dims,
                    init_path=init_path)


def parallel_dims(plan, plan_path: Path, model_cfg, sequence_parallel: bool = True,
                  seq_len: Optional[int] = None):
    """The layout for the ranks this process was started with (no torch needed).

    One rank trains in one process whatever the plan says (a run resumed on a smaller
    allocation); several ranks take the plan's layout, or plain DDP without a plan.
    """
    from llmctl.parallel.dims import ParallelDims
    from llmctl.parallel.rendezvous import discover

    world = discover().world_size
    if world == 1:
        return ParallelDims()
    dims = ParallelDims.from_plan(plan.parallelism) if plan is not None else ParallelDims(dp=world)
    dims.sequence_parallel = dims.tp > 1 and sequence_parallel
    dims.validate(world, model_cfg, where=str(plan_path) if plan is not None else "launch", seq_len=seq_len)
    return dims
