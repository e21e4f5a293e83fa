"""A request body checked as a whole before any field is read: valid JSON, no NaN or
Infinity, no lone surrogates, bounded nesting.

Each of these once reached code that could not take it: Python's json reads
`NaN`, which passed the range checks (NaN compares false) and made the sampler
raise in the engine thread; a lone surrogate ("\\ud800") made the tokenizer and
the UTF-8 response encoder raise; 100,000 nested brackets raised RecursionError.
Fields are checked one by one in `protocol.sampling_params` and `prompt_ids`.
"""

from __future__ import annotations

import json
from typing import Any

from llmctl.serve.protocol import ApiError

MAX_DEPTH = 32  # an OpenAI body nests 4 deep (messages[i].content[j].text); 32 is generous


def _no_constant(name: str):
    # RFC 8259 has no NaN or Infinity; Python's json would hand them to the engine.
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes | str) -> Any:
    """json.loads, refusing NaN/Infinity and reporting every failure as a 400."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"the body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # includes UnicodeDecodeError (bytes that are not UTF-8)
        raise ApiError(400, f"not valid JSON: {e}") from None


def check_tree(body: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings (keys too) that UTF-8 cannot
    encode; `param` names where, e.g. messages[0].content. Iterative: a deep body
    must not recurse here either."""
    stack = [(body, 0, "")]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"the body nests deeper than {MAX_DEPTH} levels", path or None)
        if isinstance(value, str):
            _utf8(value, path)
        elif isinstance(value, dict):
            for k, v in value.items():
                _utf8(k, path)
                stack.append((v, depth + 1, f"{path}.{k}" if path else k))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value))


def _utf8(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"{path or 'the body'}: a lone surrogate (U+{ord(s[e.start]):04X}) is not "
                            "text; send UTF-8", path or None) from None
