"""`--set KEY=VALUE`: one-off overrides of a site-config's fields and of job settings.

    --set account=proj42                      a job setting (as --account would)
    --set env.NCCL_DEBUG=INFO                 a site-config field, by its dotted key path
    --set partitions.gpu.max_time=48:00:00
    --set modules='["cuda/12.4", "nccl"]'     VALUE is read as a TOML value when it is one
                                              (number, boolean, array, quoted string), else as text

The keys of `llmctl.config.user.KEYS` are job settings; every other key is a path into
the site-config, which is validated again with the override in place, so an unknown key
or a bad value is refused the way a wrong site-config file is (file, key path, problem).
Nothing is written back: the site-config file stays as its admins keep it.
"""

from __future__ import annotations

import re
from typing import Any

from llmctl.errors import LlmctlError

# A key path: names joined by '.', each as TOML would take it bare.
_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
# Site fields a command line may not change: shell lines run unquoted (the admins review them).
_REFUSED = {"setup": "setup lines are shell code that the site's admins review; they cannot come from --set",
            "name": "a site's name names its file; choose the site with --site instead"}


def parse(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """`KEY=VALUE` strings -> (key path, value) pairs, in order; a bad one is refused."""
    from llmctl.config.base import tomllib

    out: list[tuple[str, Any]] = []
    seen: dict[str, str] = {}
    for raw in items:
        key, eq, text = raw.partition("=")
        key = key.strip()
        if not eq or not _KEY.fullmatch(key):
            raise LlmctlError(f"--set {raw!r}: not KEY=VALUE with KEY a dotted key path",
                              hint="e.g. --set account=proj42 or --set env.NCCL_DEBUG=INFO")
        top = key.split(".")[0]
        if top in _REFUSED:
            raise LlmctlError(f"--set {key}: {_REFUSED[top]}")
        if key in seen and seen[key] != text:
            raise LlmctlError(f"--set {key} is given twice ({seen[key]!r} and {text!r})")
        seen[key] = text
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # plain text: INFO, 48:00:00, nvcr.io#nvidia/pytorch:25.01-py3
        out.append((key, value))
    return out


def split(pairs: list[tuple[str, Any]]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """(job settings by key, site-config overrides) from parsed --set pairs."""
    from llmctl.config.user import KEYS

    job = {k: v for k, v in pairs if k in KEYS}
    site = [(k, v) for k, v in pairs if k not in KEYS]
    for key, value in job.items():
        if key == "mail_type" and isinstance(value, str):
            job[key] = [t.strip().upper() for t in value.split(",") if t.strip()]
    return job, site


def apply(data: dict[str, Any], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of `data` (a site-config as parsed) with each override set at its key path."""
    import copy

    out = copy.deepcopy(data)
    for key, value in pairs:
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[:i + 1])
                raise LlmctlError(f"--set {key}: {where} is a value ({child!r}), not a table of keys")
            node = child
        node[parts[-1]] = value
    return out


def shown(value: Any) -> str:
    """A value as --dry-run shows it: text as it is, the rest as TOML would write it."""
    import json

    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)
