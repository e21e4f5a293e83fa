"""Atomic checkpoints with a `latest` pointer, and their safe loading.

    checkpoints/
      step-00000100/       model.safetensors, optimizer.pt, rng.pt, state.json
      step-00000200/
      latest               "step-00000200" (rewritten atomically, last)

A checkpoint is written into `.tmp-step-N-PID/`, every file fsynced, then renamed
into place; only then does `latest` move to it, and only then are old ones pruned
(keeping the last `keep_last`). A writer killed at any moment leaves the previous
checkpoint whole and `latest` pointing at it; leftover `.tmp-*` folders are removed
at the next start. Loading never unpickles arbitrary objects: weights come from
safetensors, optimizer and RNG state through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError
from llmctl.fsutil import atomic_write_text

LATEST = "latest"
MODEL, OPTIMIZER, RNG, STATE = "model.safetensors", "optimizer.pt", "rng.pt", "state.json"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """The checkpoints of one run (or array task)."""

    def __init__(self, folder: str | Path, keep_last: int = 3):
        self.folder = Path(folder)
        self.keep_last = keep_last

    # --- finding ----------------------------------------------------------------
    def clean_partial(self) -> list[Path]:
        """Remove what an interrupted writer left (`.tmp-*` folders); returns them."""
        gone = []
        if self.folder.is_dir():
            for p in self.folder.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
        return gone

    def latest(self) -> Optional[Path]:
        """The checkpoint `latest` points at, or None when there is none yet."""
        pointer = self.folder / LATEST
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        path = self.folder / name
        if not name or "/" in name or not (path / STATE).is_file():
            raise LlmctlError(f"{pointer}: points at {name!r}, which is not a complete checkpoint",
                              hint="point it at an intact step-* folder, or remove it to start over")
        return path

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("step-*") if (p / STATE).is_file())

    # --- writing ----------------------------------------------------------------
    def save(self, step: int, model, optimizer, state: dict[str, Any]) -> Path:
        """Write checkpoint `step` atomically, move `latest` to it, prune old ones."""
        import torch
        from safetensors.torch import save_model

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".tmp-{step_name(step)}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save_model(model, str(tmp / MODEL))  # handles a tied head (shared tensors)
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
            for name in (MODEL, OPTIMIZER):
                _fsync_file(tmp / name)
            return self.publish(tmp, step, state)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def publish(self, tmp: Path, step: int, state: dict[str, Any], sync_all: bool = False) -> Path:
        """The commit shared by every writer: RNG state and state.json into `tmp`, then
        rename it to step-N, then move `latest`, then prune. `sync_all` flushes every
        file on the machine (other ranks wrote shards into `tmp` too)."""
        import torch

        final = self.folder / step_name(step)
        torch.save(rng_state(), tmp / RNG)
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n", encoding="utf-8")
        if sync_all:
            os.sync()
        else:
            for name in (RNG, STATE):
                _fsync_file(tmp / name)
            _fsync_dir(tmp)
        if final.exists():
            # A checkpoint of this step that `latest` never pointed at (a writer was
            # killed between the rename and the pointer): replace it.
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(self.folder)
        atomic_write_text(self.folder / LATEST, final.name + "\n")
        self.prune(keep=final)
        return final

    def prune(self, keep: Path) -> None:
        done = self.complete()
        for p in done[:-self.keep_last] if len(done) > self.keep_last else []:
            if p != keep:
                shutil.rmtree(p, ignore_errors=True)

    # --- reading ----------------------------------------------------------------
    def load(self, path: Path, model, optimizer, expect: dict[str, str], device) -> dict[str, Any]:
        """Load checkpoint `path` into `model` and `optimizer`; returns its state.json.

        `expect` holds the hashes the checkpoint must carry (model_hash, config_hash):
        a checkpoint of another model or another config is refused before anything
        is loaded.
        """
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        try:
            state = json.loads((path / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LlmctlError(f"{path / STATE}: cannot read: {e}") from e
        if state.get("model_hash") != expect["model_hash"]:
            raise LlmctlError(
                f"{path}: checkpoint of another model ({state.get('model_name')!r}, "
                f"{state.get('model_shape')}), not this run's ({expect.get('model_name')!r}, "
                f"{expect.get('model_shape')}); refusing to load it",
                hint="use a new run folder for a different model (the checkpoints were left as they are)")
        if state.get("config_hash") != expect["config_hash"]:
            raise LlmctlError(
                f"{path}: checkpoint made with another training config (optimizer, batch, schedule, "
                "seed or data changed); refusing to resume from it",
                hint="use a new run folder, or restore the config the run started with")
        from llmctl.parallel import checkpoint as sharded

        if sharded.kind(path) == "dcp":
            # Saved by a distributed run in another layout: DCP reshards it into this one.
            try:
                sharded.load_dcp(path, model, optimizer)
            except Exception as e:  # DCP raises CheckpointException, RuntimeError, KeyError...
                raise LlmctlError(f"{path}: cannot load the sharded checkpoint: {e}") from None
            set_rng_state(torch.load(path / RNG, map_location="cpu", weights_only=True))
            return state
        if sharded.kind(path) == "deepspeed":
            raise LlmctlError(f"{path}: a DeepSpeed ZeRO checkpoint; resume it with the same ZeRO layout",
                              hint="or convert it with the zero_to_fp32.py script DeepSpeed put in it")
        try:
            missing, unexpected = load_model(model, str(path / MODEL), strict=False, device=str(device))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise LlmctlError(f"{path / MODEL}: cannot load: {e}") from None
        if missing or unexpected:
            raise LlmctlError(f"{path / MODEL}: tensors do not match the model "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
        try:
            opt = torch.load(path / OPTIMIZER, map_location=device, weights_only=True)
            rng = torch.load(path / RNG, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise LlmctlError(f"{path}: cannot load optimizer or RNG state: {e}") from None
        optimizer.load_state_dict(opt)
        set_rng_state(rng)
        return state
