"""One reader for files of JSON objects, one per line (JSONL): eval task datasets
(llmctl.eval.tasks), `serve batch` input (llmctl.serve.batch) and the jsonl and chat
data sources (llmctl.data.sources).

Lines are split on "\\n" only: a raw U+2028 inside a string is text, not a line break
(`str.splitlines` would cut the line there). Blank lines are skipped. The file is
streamed, never read whole (a data source may hold gigabytes). Every problem is one
`JsonlError` naming `file:line`: an LlmctlError (one line, exit code 2) and a
ValueError (data preparation's workers report bad input as ValueError).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from llmctl.errors import LlmctlError


class JsonlError(LlmctlError, ValueError):
    """A JSONL file that cannot be read, or a line that is not a JSON object."""


def _no_constant(name: str):
    # RFC 8259 has no NaN or Infinity; Python's json would pass them on.
    raise ValueError(f"{name} is not a JSON number")


def read_objects(path: str | Path, what: str = "a line", finite: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of `path`; `what` names a line in
    errors ("a document must be a JSON object"); `finite` refuses NaN and Infinity."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise JsonlError(f"{path}: not found") from None
    except OSError as e:
        raise JsonlError(f"{path}: cannot read: {e.strerror or e}") from None
    constant = {"parse_constant": _no_constant} if finite else {}
    with f:
        for n, raw in enumerate(f, start=1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise JsonlError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line, **constant)
            except RecursionError:
                raise JsonlError(f"{where}: nested too deeply") from None
            except json.JSONDecodeError as e:  # its "line 1" would be this line: the column says where
                raise JsonlError(f"{where}: not valid JSON: {e.msg} at column {e.colno}") from None
            except ValueError as e:  # NaN or Infinity with `finite`
                raise JsonlError(f"{where}: not valid JSON: {e}") from None
            if not isinstance(obj, dict):
                raise JsonlError(f"{where}: {what} must be a JSON object")
            yield n, obj
