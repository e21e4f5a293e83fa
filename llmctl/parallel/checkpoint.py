"""Sharded, reshardable checkpoints: torch.distributed.checkpoint (DCP), or DeepSpeed's for ZeRO.

DCP writes each rank's shards plus global metadata (every tensor's full shape and
where its pieces lie), keyed by the full model's parameter names; loading into
another layout (dp=2 -> dp=1, tp=2 -> tp=1, pp=2 -> pp=1) reads the pieces each
rank needs. It also loads in a single process with no process group, which is how
the one-process trainer resumes from a distributed run. Layout inside a step folder:

    step-N/dcp/        .metadata, __<rank>_0.distcp (DCP)      or
    step-N/deepspeed/  DeepSpeed's engine checkpoint (ZeRO 1-3; same layout to resume)
    step-N/rng.pt, state.json   (as single-process checkpoints)
"""

from __future__ import annotations

from pathlib import Path

DCP_DIR, DS_DIR = "dcp", "deepspeed"


def kind(path: Path) -> str:
    """'dcp', 'deepspeed' or 'safetensors' (a single-process checkpoint)."""
    if (path / DCP_DIR / ".metadata").is_file():
        return "dcp"
    if (path / DS_DIR).is_dir():
        return "deepspeed"
    return "safetensors"


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Flattened: optimizer state and param-group settings keyed by parameter name, not by
    # group index, so pipeline stages (each with its own groups) do not overwrite each other.
    return StateDictOptions(full_state_dict=False, flatten_optimizer_state_dict=True)


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


def save_deepspeed(folder: Path, engine) -> None:
    engine.save_checkpoint(str(folder / DS_DIR), tag="engine")


def load_deepspeed(folder: Path, engine) -> None:
    from llmctl.errors import LlmctlError

    path, _ = engine.load_checkpoint(str(folder / DS_DIR), tag="engine")
    if path is None:
        raise LlmctlError(f"{folder / DS_DIR}: DeepSpeed could not load this checkpoint",
                          hint="a ZeRO checkpoint resumes with the same number of ranks; run "
                               "zero_to_fp32.py in it to get whole weights for another layout")
