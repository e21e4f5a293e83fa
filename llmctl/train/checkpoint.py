"""Atomic checkpoints with a `latest` pointer, and their safe loading.

    checkpoints/
      step-00000100/       model.safetensors, optimizer.pt, rng.pt, state.json
                           (several ranks: dcp/ instead of model and optimizer; any layout
                           reads either, see llmctl.parallel.checkpoint)
      step-00000200/
      latest               "step-00000200" (rewritten atomically, last)

A checkpoint is written into `.tmp-step-N-PID/`, every file fsynced, then renamed
into place; only then does `latest` move to it, and only then are old ones pruned
(keeping the last `keep_last`). A writer killed at any moment leaves the previous
checkpoint whole and `latest` pointing at it; leftover `.tmp-*` folders are removed
at the next start. A write the operating system refuses (a full disk) is one line
naming the file and the space left, and the temporary folder is removed.

state.json records the size and sha256 of every other file of the checkpoint (the
shards of a sharded one included) under "files"; loading checks them first and
refuses a file that changed, naming it (`verify=False`, the trainer's and export's
`--skip-verify`, loads it anyway). A checkpoint from before the digests loads with
a warning. Loading never unpickles arbitrary objects: weights come from
safetensors, optimizer and RNG state through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from llmctl.errors import LlmctlError
from llmctl.fsutil import atomic_write_text, os_error_reason, write_error, writing

LATEST = "latest"
MODEL, OPTIMIZER, RNG, STATE = "model.safetensors", "optimizer.pt", "rng.pt", "state.json"
FILES = "files"  # state.json's key: {relative path: {"bytes": n, "sha256": hex}}
SKIP_VERIFY_HINT = "pass --skip-verify to load it as it is"
WRITE_HINT = "free space there, or lower checkpoint.keep_last, then resume"


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


def _torch_save(obj, path: Path) -> None:
    """torch.save through a Python file: a refused write then carries its errno (given a
    path, torch's C++ writer only says "unexpected pos"); fsynced before it is closed."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


# --- digests ---------------------------------------------------------------------

def _sha256(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 22)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])  # hashlib releases the GIL: files hash in parallel threads
            size += n
    return {"bytes": size, "sha256": h.hexdigest()}


def checkpoint_files(folder: Path) -> list[str]:
    """Every file of a checkpoint folder but state.json, as sorted relative paths."""
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(n for n in names if n != STATE)


def digest_files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {"bytes", "sha256"}} for these files of `folder`, hashed in parallel threads."""
    if not names:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1, 8)) as pool:
        return dict(zip(names, pool.map(lambda n: _sha256(folder / n), names)))


def share(names: list[str], rank: int, world: int) -> list[str]:
    """The files rank `rank` of `world` hashes: every world-th, so ranks split the reading."""
    return sorted(names)[rank::world]


def verify_files(path: Path, state: Optional[dict[str, Any]] = None,
                 names: Optional[list[str]] = None) -> list[str]:
    """Problems with the files of checkpoint `path` against state.json's digests, one line
    each ([] when all match; the checks of `names` only, when given: a rank's share)."""
    if state is None:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    files = state.get(FILES) or {}
    problems = []
    todo = []
    for name in (sorted(files) if names is None else names):
        p = path / name
        want = files[name]
        if not p.is_file():
            problems.append(f"{p}: missing (state.json lists it)")
        elif p.stat().st_size != want["bytes"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, state.json records {want['bytes']}")
        else:
            todo.append(name)
    for name, got in digest_files(path, todo).items():
        if got["sha256"] != files[name]["sha256"]:
            problems.append(f"{path / name}: contents differ from the sha256 state.json records")
    return problems


def refuse(path: Path, problems: list[str]) -> LlmctlError:
    """The error for a checkpoint whose files fail their digests."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return LlmctlError(
        f"{problems[0]}{more}: the checkpoint is corrupt or was changed after it was written; "
        "refusing to load it",
        hint=f"restore the file, or point {path.parent / LATEST} at an earlier step-* folder, "
             f"or {SKIP_VERIFY_HINT}")


def check_files(path: Path, state: dict[str, Any], verify: bool = True,
                warn: Optional[Callable[[str], None]] = None) -> None:
    """Refuse checkpoint `path` unless its files match state.json's digests. With `verify`
    False, or for a checkpoint written before digests were recorded, warn and go on."""
    warn = warn or _warn
    if not verify:
        warn(f"{path}: files not verified (--skip-verify)")
        return
    if FILES not in state:
        warn(f"{path}: state.json records no file digests (written by an older llmctl); "
             "loading it unverified")
        return
    problems = verify_files(path, state)
    if problems:
        raise refuse(path, problems)


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LlmctlError(f"{path / STATE}: cannot read: {e}") from None


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
        from safetensors.torch import save_model

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".tmp-{step_name(step)}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with self._refused(tmp, step):
                tmp.mkdir()
            with self._refused(tmp / MODEL, step):
                save_model(model, str(tmp / MODEL))  # handles a tied head (shared tensors)
                _fsync_file(tmp / MODEL)
            with self._refused(tmp / OPTIMIZER, step):
                _torch_save(optimizer.state_dict(), tmp / OPTIMIZER)
            return self.publish(tmp, step, state)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _tail(self) -> str:
        pointer = self.folder / LATEST
        try:
            name = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
        except OSError:
            name = ""
        return f"; `latest` still points at {name}" if name else "; no checkpoint was written"

    def _refused(self, path: Path, step: int):
        """A refused write of `path` (a full disk) as one line that also says where `latest`
        still points (the caller removes the temporary folder)."""
        return writing(path, f"checkpoint step {step}", self._tail(), hint=WRITE_HINT)

    def write_failure(self, path: Path, step: int, exc: BaseException) -> Optional[LlmctlError]:
        """The same line for `exc`, when it is the operating system refusing a write (None
        for anything else): for writers that cannot use `_refused` (every rank's shards)."""
        reason = os_error_reason(exc)
        if reason is None:
            return None
        return write_error(path, f"checkpoint step {step}", reason, self._tail(), hint=WRITE_HINT)

    def publish(self, tmp: Path, step: int, state: dict[str, Any], sync_all: bool = False,
                digests: Optional[dict[str, dict[str, Any]]] = None) -> Path:
        """The commit shared by every writer: RNG state into `tmp`, the digest of every file
        into state.json, then rename it to step-N, then move `latest`, then prune.
        `sync_all` flushes every file on the machine (other ranks wrote shards into `tmp`
        too); `digests` holds those the ranks computed already (the rest are hashed here)."""
        final = self.folder / step_name(step)
        with self._refused(tmp / RNG, step):
            _torch_save(rng_state(), tmp / RNG)
        names = checkpoint_files(tmp)
        files = {n: d for n, d in (digests or {}).items() if n in names}
        files.update(digest_files(tmp, [n for n in names if n not in files]))
        with self._refused(tmp / STATE, step):
            with open(tmp / STATE, "w", encoding="utf-8") as f:
                f.write(json.dumps({**state, "step": step, FILES: files}, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if sync_all:
                os.sync()
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
    def load(self, path: Path, model, optimizer, expect: dict[str, str], device,
             verify: bool = True, warn: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
        """Load checkpoint `path` into `model` and `optimizer`; returns its state.json.

        `expect` holds the hashes the checkpoint must carry (model_hash, config_hash):
        a checkpoint of another model or another config is refused before anything
        is loaded, and so is one whose files do not match their digests (unless not
        `verify`).
        """
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        state = read_state(path)
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
        check_files(path, state, verify, warn)
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
            raise LlmctlError(f"{path}: a DeepSpeed-layout checkpoint (written before ZeRO runs wrote DCP): "
                              "its optimizer state resumes the same ZeRO layout only",
                              hint="resume it with the ZeRO layout that wrote it; its next checkpoint loads "
                                   "anywhere (`llmctl export` and `eval run` read it as it is)")
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
