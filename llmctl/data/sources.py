"""Where documents come from: listed files, globs, JSONL files, or the stdlib's source.

A *unit* is one file; a plain file is one document, a JSONL file holds one document
per line. Units are listed in a fixed (sorted) order so that every run sees the
same documents in the same order, which makes shards and splits reproducible.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from llmctl.errors import ConfigError
from llmctl.jsonl import read_objects

# Test suites and IDLE are left out of the stdlib corpus: the tests are large,
# repetitive and full of deliberately odd text; the rest is ~11 MB of real code.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}


@dataclass(frozen=True)
class Unit:
    """One input file and how to read documents out of it."""

    source: int  # index into DataConfig.sources
    path: str
    kind: str  # "text", "jsonl" or "chat"
    text_field: str = "text"  # jsonl: the text; chat: the messages


def stdlib_files() -> list[Path]:
    """The Python standard library's own .py files (minus tests), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for folder, dirs, files in os.walk(root):
        # Prune while walking: site-packages alone can hold ten times the stdlib.
        dirs[:] = [d for d in dirs if d not in _STDLIB_SKIP]
        out += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(out)


def _expand(pattern: str, base: Path) -> list[Path]:
    full = pattern if os.path.isabs(pattern) else str(base / pattern)
    full = os.path.expanduser(full)
    if glob.has_magic(full):
        return sorted(Path(p) for p in glob.glob(full, recursive=True) if os.path.isfile(p))
    return [Path(full)] if os.path.isfile(full) else []


def list_units(cfg, config_name: str, base: Path) -> list[Unit]:
    """Every input file of `cfg` (a DataConfig); relative paths are taken from `base`.

    A source that matches no file is an error naming the source and the pattern,
    so a typo never silently trains on less data.
    """
    units: list[Unit] = []
    for i, src in enumerate(cfg.sources):
        if src.type == "stdlib":
            files = stdlib_files()
            if not files:
                raise ConfigError(config_name, [f"sources[{i}]: no .py files in the stdlib folder "
                                                f"{sysconfig.get_paths()['stdlib']}"])
            units += [Unit(i, str(p), "text") for p in files]
            continue
        for j, pattern in enumerate(src.paths):
            files = _expand(pattern, base)
            if not files:
                raise ConfigError(config_name, [f"sources[{i}].paths[{j}]: {pattern!r} matches no files "
                                                f"(relative paths are taken from {base})"])
            kind = src.type if src.type in ("jsonl", "chat") else "text"
            field = src.messages_field if src.type == "chat" else src.text_field
            units += [Unit(i, str(p), kind, field) for p in files]
    return units


def read_documents(unit: Unit) -> Iterator[tuple[str, str]]:
    """Yield (document key, text) for each document in `unit`.

    The key ("path" or "path:line") identifies the document for the train/val split.
    """
    if unit.kind == "text":
        with open(unit.path, "rb") as f:
            yield unit.path, f.read().decode("utf-8", errors="replace")
        return
    for n, obj in read_objects(unit.path, "a record"):
        if unit.text_field not in obj:
            raise ValueError(f"{unit.path}:{n}: no field {unit.text_field!r}")
        text = obj[unit.text_field]
        if not isinstance(text, str):
            raise ValueError(f"{unit.path}:{n}: field {unit.text_field!r} is not a string")
        yield f"{unit.path}:{n}", text


def read_conversations(unit: Unit) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """Yield (document key, messages) for each record of a chat unit: a conversation
    (`messages`: [{role, content}, ...]) or an instruction (`instruction`, optional `input`,
    `output`: a user turn and the assistant's answer)."""
    for n, obj in read_objects(unit.path, "a record"):
        where = f"{unit.path}:{n}"
        if unit.text_field in obj:
            msgs = obj[unit.text_field]
        elif "instruction" in obj and "output" in obj:
            prompt = obj["instruction"] + (f"\n\n{obj['input']}" if obj.get("input") else "")
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}]
        else:
            raise ValueError(f"{where}: neither {unit.text_field!r} nor instruction/output")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise ValueError(f"{where}: {unit.text_field!r} must be a list of {{role, content}} strings")
        if not any(m["role"] == "assistant" for m in msgs):
            raise ValueError(f"{where}: no assistant message: nothing to learn from")
        yield f"{unit.path}:{n}", [{"role": m["role"], "content": m["content"]} for m in msgs]


def split_score(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, document key): below val_fraction -> validation.

    Hashing the key (rather than drawing in order) keeps a document in the same split
    when other documents are added or removed.
    """
    h = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def file_fingerprint(units: list[Unit]) -> str:
    """sha256 over every input file's path, size and modification time."""
    h = hashlib.sha256()
    for u in units:
        st = os.stat(u.path)
        h.update(f"{u.source}\0{u.path}\0{u.kind}\0{u.text_field}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(
            "utf-8", "surrogatepass"))
    return h.hexdigest()
