"""Host paths as the job sees them: through the site's mounts, or refused.

A container sees only what is mounted into it; a batch job without one sees only
the filesystems its nodes share. Every path a job uses (the run folder, its data,
checkpoints, artifact and configs) is written on the login node as a host path;
`PathMap.to_job` gives the path inside the job, and refuses, before anything is
written, a path the job could not see, naming it and the mounts.
"""

from __future__ import annotations

import posixpath
from typing import Any, Optional

from llmctl.errors import LlmctlError


class PathMap:
    """Host -> job paths for one site (`mounts` None: every path, unchanged)."""

    def __init__(self, site_name: str, mounts: Optional[list[tuple[str, str, bool]]], container: bool):
        self.site_name = site_name
        # Longest source first: a nested mount wins over the one that holds it.
        self.mounts = None if mounts is None else sorted(mounts, key=lambda m: -len(m[0]))
        self.container = container

    @classmethod
    def for_site(cls, site: Any) -> "PathMap":
        return cls(site.name, site.job_mounts(), site.container.runtime != "none")

    def describe(self) -> str:
        if not self.mounts:
            return "no mounts"
        if not self.container:
            return ", ".join(s for s, _, _ in self.mounts)
        return ", ".join(f"{s}:{d}" + (":ro" if ro else "") for s, d, ro in self.mounts)

    def to_job(self, path: str, what: str) -> str:
        """`path` (absolute, on the host) as the job sees it; LlmctlError if it cannot."""
        if self.mounts is None:
            return path
        norm = posixpath.normpath(path)
        for src, dst, _ in self.mounts:
            if norm == src or norm.startswith(src.rstrip("/") + "/"):
                rest = norm[len(src):].lstrip("/")
                return posixpath.join(dst, rest) if rest else dst
        kind = "mounts" if self.container else "shared filesystems"
        raise LlmctlError(
            f"{what} {path} is not visible inside the job: site {self.site_name!r} {kind}: {self.describe()}",
            hint="put it on one of those filesystems, or have the site admins add a mount for it")

    def writable(self, path: str) -> bool:
        """False when `path` lies under a read-only mount."""
        if not self.mounts:
            return True
        norm = posixpath.normpath(path)
        for src, _, ro in self.mounts:
            if norm == src or norm.startswith(src.rstrip("/") + "/"):
                return not ro
        return True

    def program(self, argv: list[str]) -> list[str]:
        """Each absolute path in a program's arguments mapped; named by the flag before it."""
        out = []
        for i, arg in enumerate(argv):
            if arg.startswith("/"):
                flag = argv[i - 1] if i and argv[i - 1].startswith("-") else "argument"
                out.append(self.to_job(arg, flag))
            else:
                out.append(arg)
        return out
