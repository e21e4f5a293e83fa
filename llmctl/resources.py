"""Where the data files that ship with llmctl live: templates, solvers, site-configs.

In a wheel they are mapped into `llmctl/_data/` (see pyproject.toml) and read with
importlib.resources; in a source checkout or editable install they are the
repository's top-level folders.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from llmctl.errors import LlmctlError

KINDS = ("templates", "solvers", "site-configs")


def data_dir(kind: str) -> Path:
    """Return the folder holding the shipped `kind` files (one of KINDS)."""
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {KINDS}")
    packaged = importlib.resources.files("llmctl") / "_data" / kind
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parent.parent / kind
    if source.is_dir():
        return source
    raise LlmctlError(
        f"llmctl's {kind} folder is missing (looked in {packaged} and {source})",
        hint="reinstall llmctl; the wheel maps templates/, solvers/ and site-configs/ into llmctl/_data/",
    )
