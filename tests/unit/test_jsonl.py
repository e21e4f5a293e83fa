"""The one JSONL reader (llmctl.jsonl) that eval tasks, batch files and data sources share."""

from __future__ import annotations

import math

import pytest

from llmctl.errors import LlmctlError
from llmctl.jsonl import JsonlError, read_objects


def test_lines_split_on_newline_only_blank_lines_skipped(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes('{"t": "one\u2028still one"}\r\n\n   \n{"t": 2}\n'.encode())
    assert list(read_objects(f)) == [(1, {"t": "one\u2028still one"}), (4, {"t": 2})]


@pytest.mark.parametrize("content,problem", [
    (b'{"a": 1}\n{nope\n', "a.jsonl:2: not valid JSON: Expecting property name enclosed in double quotes at column 2"),
    (b'{"a": 1}\n\n[1, 2]\n', "a.jsonl:3: a record must be a JSON object"),
    (b'{"a": "\xff"}\n', "a.jsonl:1: not UTF-8 text"),
])
def test_errors_name_file_and_line(tmp_path, content, problem):
    f = tmp_path / "a.jsonl"
    f.write_bytes(content)
    with pytest.raises(JsonlError) as e:
        list(read_objects(f, "a record"))
    assert problem in e.value.message
    assert isinstance(e.value, LlmctlError) and isinstance(e.value, ValueError)


def test_streams_and_refuses_nan_only_when_asked(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"x": NaN}\n{bad\n')
    rows = read_objects(f)
    assert math.isnan(next(rows)[1]["x"])  # read as a float: refused only with finite=True
    with pytest.raises(JsonlError, match="a.jsonl:2"):  # the bad line fails only when reached
        next(rows)
    with pytest.raises(JsonlError, match="a.jsonl:1: not valid JSON: NaN is not a JSON number"):
        list(read_objects(f, finite=True))


def test_a_missing_file_is_one_error(tmp_path):
    with pytest.raises(JsonlError, match="nope.jsonl: not found"):
        list(read_objects(tmp_path / "nope.jsonl"))
