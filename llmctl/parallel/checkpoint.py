"""One checkpoint format story: what every layout writes, and how any layout reads it.

Two formats, one set of names. A single process writes `model.safetensors` +
`optimizer.pt`; every distributed layout (DDP, FSDP2, tp, pp, their mixes, and
DeepSpeed ZeRO 1-3) writes torch.distributed.checkpoint (DCP) into `dcp/`: each
rank its pieces, plus global metadata (every tensor's full shape and where its
pieces lie). Both are keyed by the full model's parameter names:

    model.<name>                       the fp32 weights (ZeRO: its fp32 master copy)
    optim.state.<name>.<key>           AdamW's step, exp_avg, exp_avg_sq per parameter
    optim.param_groups.<name>.<key>    the settings of the parameter's group

(torch's flattened optimizer state dict, `flatten_optimizer_state_dict=True`, so
pipeline stages with groups of their own do not overwrite each other). So:

- any layout resumes any checkpoint: DCP reshards a `dcp/` checkpoint into the
  loading layout (`dcp.load` reads the pieces each rank needs), one process
  included; a single-process checkpoint loads into several ranks through the
  same DCP load (`single_to_dcp` rewrites it first); ZeRO, whose engine keeps
  flat partitions, reads and writes each parameter whole through DeepSpeed's own
  `safe_get/set_full_*` calls, one parameter at a time;
- export and eval consolidate any checkpoint with `Source.model_tensors()`, which
  streams one tensor at a time (DCP: `dcp.load(..., no_dist=True)` of that key
  only, from the metadata's shape), so a 70B checkpoint never sits whole in one
  process's memory.

Older ZeRO checkpoints in DeepSpeed's own layout (`deepspeed/`) still resume with
the same ZeRO layout, and export and evaluate through DeepSpeed's zero_to_fp32.

    step-N/dcp/        .metadata, __<rank>_0.distcp
    step-N/rng.pt, state.json   (as single-process checkpoints)
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Iterator, Optional

from llmctl.errors import LlmctlError

DCP_DIR, DS_DIR = "dcp", "deepspeed"
MODEL_FILE, OPTIM_FILE = "model.safetensors", "optimizer.pt"
# safetensors' save_model keeps one name of a tied head's shared tensor
_TIED = {"head.weight": "tok_emb.weight", "tok_emb.weight": "head.weight"}


def kind(path: Path) -> str:
    """'dcp', 'deepspeed' or 'safetensors' (a single-process checkpoint)."""
    if (path / DCP_DIR / ".metadata").is_file():
        return "dcp"
    if (path / DS_DIR).is_dir():
        return "deepspeed"
    return "safetensors"


def _options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Flattened: optimizer state and param-group settings keyed by parameter name, not by
    # group index, so pipeline stages (each with its own groups) do not overwrite each other.
    return StateDictOptions(full_state_dict=full, flatten_optimizer_state_dict=True)


# --- DDP, FSDP2, tp, pp --------------------------------------------------------------

def save_dcp(folder: Path, module, optimizer) -> None:
    """Every rank calls this: its shards of model and optimizer state into folder/dcp."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer, options=_options())
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / DCP_DIR))


def load_dcp(folder: Path, module, optimizer) -> None:
    """Every rank calls this (or the one process): reshards into this layout."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer, options=_options())
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(folder / DCP_DIR))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options())


# --- DeepSpeed ZeRO, in the same format ------------------------------------------------

def _zero_params(engine) -> list[tuple[list[str], object, int]]:
    """([names], parameter, group index) for every parameter of a ZeRO engine, in one order
    on every rank (a tied parameter has both names)."""
    opt = engine.optimizer
    groups = getattr(opt, "bit16_groups", None) or getattr(opt, "fp16_groups", None)
    # Stage 3 splits groups into sub-groups; the optimizer's param_groups are the groups.
    to_group = getattr(opt, "sub_group_to_group_id", None) or {}
    group_of = {id(p): to_group.get(i, i) for i, g in enumerate(groups) for p in g}
    names: dict[int, list[str]] = {}
    params = {}
    for name, p in engine.module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params[id(p)] = p
    return [(names[k], params[k], group_of[k]) for k in names]


def _zero_inner(engine):
    """The torch optimizer DeepSpeed drives (over its flat fp32 partitions), its state made."""
    import torch

    opt = engine.optimizer
    inner = opt.optimizer
    # The flat fp32 partitions the optimizer steps (stage 3 swaps them into its groups only
    # while stepping, so its groups cannot be asked).
    flats = getattr(opt, "single_partition_of_fp32_groups", None) or opt.fp32_partitioned_groups_flat
    for p in flats:
        if p not in inner.state:  # before the first step: torch makes it lazily
            inner.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                              "exp_avg_sq": torch.zeros_like(p)}
    if hasattr(opt, "single_partition_of_fp32_groups"):
        # Stages 1/2: tie each parameter's fragment to the state of its group's partition.
        # DeepSpeed links them once, after the first group's step, so a later group's
        # parameters may have none (0.19: "exp_avg not found in optimizer state fragment").
        from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

        for i, flat in enumerate(flats):
            lazy_init_hp_params_optimizer_state(opt.bit16_groups[i], flat, inner.state)
        opt._hp_optimizer_states_linked = True
    return inner


def _group_settings(inner, index: int) -> dict:
    return {k: v for k, v in inner.param_groups[index].items() if k != "params"}


def save_zero(folder: Path, engine, rank: int, world: int) -> None:
    """Every rank calls this: a ZeRO engine's state as DCP under the names every layout uses.

    Each parameter's fp32 master copy and Adam moments are gathered whole (DeepSpeed's
    safe_get_full_* calls, collectives: every rank asks for every parameter), and kept by
    one rank (round robin), which writes them: every rank writes 1/world of the state."""
    import torch
    import torch.distributed.checkpoint as dcp
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    inner = _zero_inner(engine)
    steps = [s["step"] for s in inner.state.values() if "step" in s]
    step = steps[0].clone() if steps else torch.tensor(0.0)
    model, optim = {}, {}
    for i, (names, p, group) in enumerate(_zero_params(engine)):
        full = safe_get_full_fp32_param(p)
        moments = {k: safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")}
        if i % world != rank:
            continue
        for name in names:
            model[name] = full.detach().cpu().clone()
        name = names[0]
        optim[f"state.{name}.step"] = step.cpu().clone()
        for k, v in moments.items():
            optim[f"state.{name}.{k}"] = v.detach().cpu().clone()
        for k, v in _group_settings(inner, group).items():
            optim[f"param_groups.{name}.{k}"] = v
    dcp.save({"model": model, "optim": optim}, checkpoint_id=str(folder / DCP_DIR))


def load_zero(source: "Source", engine) -> None:
    """Every rank calls this: each parameter whole from `source` (any format) into its ZeRO
    partitions, one parameter at a time."""
    import torch
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    inner = _zero_inner(engine)
    stage3 = hasattr(next(engine.module.parameters()), "ds_id")
    step = None
    for names, p, _ in _zero_params(engine):
        name = names[0]
        keys = [f"model.{name}", f"optim.state.{name}.exp_avg", f"optim.state.{name}.exp_avg_sq",
                f"optim.state.{name}.step"]
        got = source.read(keys)
        full = got[keys[0]].float()
        safe_set_full_fp32_param(p, full)
        safe_set_full_optimizer_state(p, got[keys[1]].float(), "exp_avg")
        safe_set_full_optimizer_state(p, got[keys[2]].float(), "exp_avg_sq")
        step = got[keys[3]]
        if stage3:  # the module's own (partitioned) copy: set whole, repartitioned on exit
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if torch.distributed.get_rank() == 0:
                    p.data.copy_(full.to(p.dtype))
        else:
            with torch.no_grad():
                p.data.copy_(full.to(p.device, p.dtype))
    for s in inner.state.values():
        s["step"] = torch.as_tensor(step, dtype=torch.float32).clone()


# --- reading any checkpoint ------------------------------------------------------------

class Source:
    """A checkpoint's tensors under the flat names above, read a few at a time."""

    def __init__(self, path: Path, model_cfg=None):
        self.path = Path(path)
        self.kind = kind(self.path)
        self.model_cfg = model_cfg
        self._optim = self._full = None
        if self.kind == "dcp":
            from torch.distributed.checkpoint import FileSystemReader

            self._meta = FileSystemReader(str(self.path / DCP_DIR)).read_metadata().state_dict_metadata
        elif self.kind == "deepspeed":
            self._meta = None
        else:
            if not (self.path / MODEL_FILE).is_file():
                raise LlmctlError(f"{self.path}: no {MODEL_FILE} and no {DCP_DIR}/ here: not a checkpoint")
            self._meta = None

    # -- the model's weights --
    def model_names(self) -> list[str]:
        """The names of the model's weights (`tok_emb.weight`, ...), as stored."""
        if self.kind == "dcp":
            return [k[len("model."):] for k in self._meta if k.startswith("model.")]
        if self.kind == "deepspeed":
            return list(self._zero_to_fp32())
        from safetensors import safe_open

        with safe_open(str(self.path / MODEL_FILE), "pt") as f:
            names = list(f.keys())
        return names + [_TIED[n] for n in names if n in _TIED and _TIED[n] not in names]

    def model_shape(self, name: str) -> tuple[tuple[int, ...], object]:
        """(shape, torch dtype) of weight `name` without reading it."""
        if self.kind == "dcp":
            md = self._meta[f"model.{name}"]
            return tuple(md.size), md.properties.dtype
        t = self.read([f"model.{name}"])[f"model.{name}"]
        return tuple(t.shape), t.dtype

    def model_tensors(self, names: Optional[list[str]] = None) -> Iterator[tuple[str, object]]:
        """(name, tensor) one weight at a time: only that tensor is in memory."""
        for name in names if names is not None else self.model_names():
            yield name, self.read([f"model.{name}"])[f"model.{name}"]

    # -- any key --
    def read(self, keys: list[str]) -> dict:
        """{key: tensor} for these flat keys (model.*, optim.state.*), read whole."""
        if self.kind == "dcp":
            return self._read_dcp(keys)
        if self.kind == "deepspeed":
            bad = [k for k in keys if not k.startswith("model.")]
            if bad:
                raise LlmctlError(f"{self.path}: a DeepSpeed-layout checkpoint (written before ZeRO "
                                  "runs wrote DCP): its optimizer state resumes the same ZeRO layout only",
                                  hint="resume it with the ZeRO layout that wrote it; its next checkpoint "
                                       "loads anywhere")
            full = self._zero_to_fp32()
            return {k: full[k[len("model."):]] for k in keys}
        return self._read_single(keys)

    def _read_dcp(self, keys: list[str]) -> dict:
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader

        missing = [k for k in keys if k not in self._meta]
        if missing:
            raise LlmctlError(f"{self.path / DCP_DIR}: no {missing[0]} in this checkpoint "
                              f"({len(missing)} keys missing)")
        out = {}
        for k in keys:
            md = self._meta[k]
            if hasattr(md, "size"):
                out[k] = torch.empty(tuple(md.size), dtype=md.properties.dtype)
        # Only these keys' bytes are read, each rank or process on its own (no collectives).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(out, storage_reader=FileSystemReader(str(self.path / DCP_DIR)), no_dist=True)
        return out

    def _read_single(self, keys: list[str]) -> dict:
        from safetensors import safe_open

        out = {}
        optim_keys = [k for k in keys if not k.startswith("model.")]
        with safe_open(str(self.path / MODEL_FILE), "pt") as f:
            stored = set(f.keys())
            for k in keys:
                if k.startswith("model."):
                    name = k[len("model."):]
                    if name not in stored and _TIED.get(name) in stored:
                        name = _TIED[name]  # a tied head is stored once, under either name
                    out[k] = f.get_tensor(name)
        if optim_keys:
            flat = self.flat_optim()
            for k in optim_keys:
                out[k] = flat[k[len("optim."):]]
        return out

    def flat_optim(self) -> dict:
        """A single-process optimizer.pt under parameter names (torch's flattened form)."""
        if self._optim is None:
            import torch

            if self.model_cfg is None:
                raise LlmctlError(f"{self.path}: reading its optimizer state needs the model config")
            osd = torch.load(self.path / OPTIM_FILE, map_location="cpu", weights_only=True, mmap=True)
            names = param_order(self.model_cfg)
            flat = {}
            for group in osd["param_groups"]:
                settings = {k: v for k, v in group.items() if k != "params"}
                for idx in group["params"]:
                    name = names[idx]
                    for k, v in osd["state"].get(idx, {}).items():
                        flat[f"state.{name}.{k}"] = v
                    for k, v in settings.items():
                        flat[f"param_groups.{name}.{k}"] = v
            self._optim = flat
        return self._optim

    def _zero_to_fp32(self) -> dict:
        """A DeepSpeed-layout checkpoint's whole fp32 weights (DeepSpeed's zero_to_fp32 merges
        every rank's partitions in memory: this older format does not stream)."""
        if self._full is None:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            self._full = get_fp32_state_dict_from_zero_checkpoint(str(self.path / DS_DIR), tag="engine")
        return self._full


def param_order(cfg) -> list[str]:
    """Parameter names in the order the trainer's optimizer indexes them (build_optimizer:
    matrices first, then vectors, each in `named_parameters` order; a tied head once)."""
    import torch

    from llmctl.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    named = list(model.named_parameters())
    return [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]


def load_weights(path: Path, model) -> None:
    """Checkpoint `path` (any format)'s weights into a plain, whole `model`, tensor by tensor
    in place (nothing else is held: the model is the memory)."""
    import torch

    src = Source(path)
    own = model.state_dict()
    stored = set(src.model_names())
    tied = getattr(getattr(model, "cfg", None), "tie_embeddings", False)
    missing = [k for k in own if k not in stored and not (tied and k == "head.weight")]
    unexpected = [k for k in stored if k not in own]
    if missing or unexpected:
        raise LlmctlError(f"{path}: tensors do not match the model "
                          f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    with torch.no_grad():
        for name, t in src.model_tensors([k for k in own if k in stored]):
            if tuple(t.shape) != tuple(own[name].shape):
                raise LlmctlError(f"{path}: {name} has shape {tuple(t.shape)}, the model "
                                  f"{tuple(own[name].shape)}")
            own[name].copy_(t)


def single_to_dcp(path: Path, out: Path, model_cfg) -> None:
    """A single-process checkpoint rewritten as DCP (the same flat names) in `out`, so that
    several ranks reshard it with the one DCP load (run by one rank)."""
    import torch.distributed.checkpoint as dcp

    src = Source(path, model_cfg)
    model = dict(src.model_tensors())
    if model_cfg.tie_embeddings:
        model["head.weight"] = model.get("head.weight", model.get("tok_emb.weight"))
    dcp.save({"model": model, "optim": src.flat_optim()}, checkpoint_id=str(out), no_dist=True)


def load_into(path: Path, runner, model_cfg, rank: int) -> None:
    """Checkpoint `path`, whatever layout wrote it, into this rank's part of `runner`'s layout.
    Every rank calls it."""
    import torch.distributed as dist

    k = kind(path)
    if not dist.is_initialized():  # one process: the trainer's own Checkpointer.load does this too
        return _load_single_process(path, runner.state_module, runner.optimizer)
    if runner.engine is not None:
        if k == "deepspeed":  # DeepSpeed's own layout: resumes the ZeRO layout that wrote it
            return load_deepspeed(path, runner.engine)
        return load_zero(Source(path, model_cfg), runner.engine)
    if k == "dcp":
        return load_dcp(path, runner.state_module, runner.optimizer)
    if k == "deepspeed":
        raise LlmctlError(f"{path}: a DeepSpeed-layout checkpoint (written before ZeRO runs wrote DCP): "
                          "its optimizer state resumes the same ZeRO layout only",
                          hint="resume it with the ZeRO layout that wrote it; its next checkpoint loads "
                               "anywhere")
    # A single-process checkpoint: rank 0 rewrites it as DCP beside it, every rank reshards it.
    tmp = path.parent / f".tmp-{path.name}-as-dcp"
    err = None
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            single_to_dcp(path, tmp, model_cfg)
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            err = f"{path}: cannot read the single-process checkpoint: {e}"
    errs = [None] * dist.get_world_size()
    dist.all_gather_object(errs, err)
    try:
        first = next((e for e in errs if e), None)
        if first:
            raise LlmctlError(first)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(runner.state_module, runner.optimizer, options=_options())
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(tmp))
        set_state_dict(runner.state_module, runner.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=_options())
    finally:
        dist.barrier()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_single_process(path: Path, model, optimizer) -> None:
    import torch
    from safetensors.torch import load_model

    k = kind(path)
    if k == "dcp":
        return load_dcp(path, model, optimizer)
    if k == "deepspeed":
        raise LlmctlError(f"{path}: a DeepSpeed-layout checkpoint resumes the same ZeRO layout only")
    load_model(model, str(path / MODEL_FILE), strict=True)
    optimizer.load_state_dict(torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=True))


def save(folder: Path, runner, rank: int, world: int) -> None:
    """Every rank calls this: the runner's state as DCP into folder/dcp, whatever its layout."""
    if runner.engine is not None:
        save_zero(folder, runner.engine, rank, world)
    else:
        save_dcp(folder, runner.state_module, runner.optimizer)


def load_deepspeed(folder: Path, engine) -> None:
    path, _ = engine.load_checkpoint(str(folder / DS_DIR), tag="engine")
    if path is None:
        raise LlmctlError(f"{folder / DS_DIR}: DeepSpeed could not load this checkpoint",
                          hint="a DeepSpeed-layout checkpoint resumes with the same number of ranks")
