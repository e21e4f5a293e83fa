"""Filesystem helpers: atomic writes, so an error never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from llmctl.errors import LlmctlError


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
            raise LlmctlError(f"cannot write {path}: {e.strerror or e}") from e
        raise
    return path
