"""Atomic writes leave the old file or the new one, never a partial one."""

from __future__ import annotations

import os

import pytest

from llmctl.errors import LlmctlError
from llmctl.fsutil import atomic_write_text


def test_writes_and_replaces(tmp_path):
    p = tmp_path / "a/b/plan.toml"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["plan.toml"]


def test_unwritable_folder_is_a_clean_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LlmctlError, match="cannot create folder"):
        atomic_write_text(blocker / "sub/out.toml", "x")


def test_interrupted_write_keeps_old_content(tmp_path, monkeypatch):
    p = tmp_path / "out.toml"
    p.write_text("old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(LlmctlError, match="No space left"):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.toml"]
