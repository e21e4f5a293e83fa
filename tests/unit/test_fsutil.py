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


def test_a_full_disk_names_the_path_and_the_space_left(tmp_path):
    from trainkit import small_filesystem

    with small_filesystem(tmp_path / "small", "64k") as small:
        atomic_write_text(small / "old.txt", "kept")
        with pytest.raises(LlmctlError) as e:
            atomic_write_text(small / "big.txt", "x" * 200_000)
        assert str(small / "big.txt") in e.value.message
        assert "No space left on device" in e.value.message
        assert f"free on {small})" in e.value.message
        assert sorted(os.listdir(small)) == ["old.txt"]  # no temporary file behind
        assert (small / "old.txt").read_text() == "kept"


def test_why_a_write_failed_whichever_library_wrote():
    from llmctl.fsutil import os_error_reason

    full = os.strerror(28)
    assert os_error_reason(OSError(28, "No space left on device")) == full
    try:  # torch.save into a Python file: its own error, the OSError in the chain
        try:
            raise OSError(122, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as e:
        assert os_error_reason(e) == os.strerror(122)
    # safetensors and tokenizers (Rust), HDF5: the errno only in the message
    assert os_error_reason(Exception("Error while serializing: I/O error: No space left on device "
                                     "(os error 28)")) == full
    assert os_error_reason(RuntimeError("Can't close file (file write failed: errno = 28, ...)")) == full
    # torch.save given a path: no errno anywhere
    assert os_error_reason(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5 vs 4")) \
        == "the write failed"
    assert os_error_reason(ValueError("a bug")) is None


def test_writing_turns_os_errors_into_one_line_and_lets_bugs_through(tmp_path):
    from llmctl.fsutil import writing

    target = tmp_path / "no-such-folder" / "f.bin"
    with pytest.raises(LlmctlError) as e:
        with writing(target, "export", "; nothing was exported"):
            target.write_bytes(b"x")
    assert e.value.message.startswith(f"export: cannot write {target}: No such file or directory (")
    assert " free on " in e.value.message and e.value.message.endswith("); nothing was exported")
    with pytest.raises(KeyError):
        with writing(target, "export"):
            raise KeyError("a bug keeps its traceback")
