"""Filesystem helpers: atomic writes, so an error never leaves a half-written file, and one
line for a write the operating system refused (a full disk above all), naming the path, the
operation and the space left."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from llmctl.errors import LlmctlError

# Libraries that do their own I/O put the errno in their message: safetensors and tokenizers
# (Rust) "os error 28", HDF5 "errno = 28", Python "[Errno 28]".
_ERRNO_IN_TEXT = re.compile(r"os error (\d+)|errno = (\d+)|\[Errno (\d+)\]")
# torch.save given a path writes through C++ streams that keep no errno; these are its words.
_TORCH_WRITE_FAILED = ("inline_container.cc", "PytorchStreamWriter", "iostream error")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def free_space(path: str | os.PathLike) -> Optional[tuple[int, Path]]:
    """(bytes free to this user, mount point) of the filesystem that holds `path` (or would:
    its nearest existing parent); None when the filesystem cannot tell."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
        dev = p.stat().st_dev
        mount = p
        while mount != mount.parent and mount.parent.stat().st_dev == dev:
            mount = mount.parent
    except OSError:
        return None
    # Root may also use the blocks the filesystem reserves (ext4's 5%).
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize, mount


def os_error_reason(exc: BaseException) -> Optional[str]:
    """Why a write failed, when `exc` is the operating system refusing it: the strerror of
    the first errno in its chain, in the failures a torch.distributed.checkpoint exception
    gathers from the ranks, or in a library's message. None for anything else (a bug)."""
    chain, seen, torch_failed = [exc], set(), False
    while chain:
        e = chain.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno)
        text = str(e)
        m = _ERRNO_IN_TEXT.search(text)
        if m:
            return os.strerror(int(next(g for g in m.groups() if g)))
        torch_failed = torch_failed or (isinstance(e, RuntimeError)
                                        and any(t in text for t in _TORCH_WRITE_FAILED))
        chain += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # CheckpointException: rank -> (exception, trace)
        if isinstance(failures, dict):
            chain += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
    return "the write failed" if torch_failed else None


def write_error(path: str | os.PathLike, operation: str, reason: str, tail: str = "",
                hint: Optional[str] = None) -> LlmctlError:
    """`operation: cannot write PATH: REASON (N free on MOUNT)TAIL` as an LlmctlError."""
    free = free_space(path)
    room = f" ({human_bytes(free[0])} free on {free[1]})" if free else ""
    return LlmctlError(f"{operation}: cannot write {path}: {reason}{room}{tail}", hint=hint)


@contextlib.contextmanager
def writing(path: str | os.PathLike, operation: str, tail: str = "",
            hint: Optional[str] = None) -> Iterator[None]:
    """Turn the operating system refusing a write of `path` (disk full, quota, permissions,
    I/O error), whichever library did the writing, into one line: path, operation, reason and
    the space left. Anything else passes through unchanged (a bug keeps its traceback).
    Removing what was half-written is the caller's business (its temporary file or folder)."""
    try:
        yield
    except LlmctlError:
        raise
    except BaseException as e:
        reason = os_error_reason(e)
        if reason is None:
            raise
        raise write_error(path, operation, reason, tail, hint) from e


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename.

    Readers see the old file or the new one, never a partial one; on any error the
    temporary file is removed and an LlmctlError names the path and the reason.
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LlmctlError(f"cannot create folder {parent}: {e.strerror or e}") from e
    if path.is_dir():
        raise LlmctlError(f"cannot write {path}: it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise LlmctlError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        else:
            # mkstemp creates 0600; give the file the usual umask-derived mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            free = free_space(parent)
            room = f" ({human_bytes(free[0])} free on {free[1]})" if free else ""
            raise LlmctlError(f"cannot write {path}: {e.strerror or e}{room}") from e
        raise
    return path
