"""The base of every config model, and the one loader that reads config files.

Every file a user writes is parsed into a pydantic model that forbids unknown
keys. Whatever goes wrong — a missing file, malformed TOML or JSON, an unknown
key, a wrong type, a broken cross-field rule — becomes one `ConfigError` whose
lines each name the file, the key path and the problem.

What a file may hold is decided here, once, for every kind:
- numbers are what they say: an integer field takes an integer (not `true`, not
  `2.0`), a boolean field `true`/`false`, and every float is finite unless its field
  says `Field(allow_inf_nan=True)`; integers fit in 64 bits, as TOML's do;
- text holds no control characters other than tab and line breaks, no lone
  surrogates and no bidirectional overrides (which make a terminal show other text
  than the file holds); keys hold none at all, and names (`Name`) are plain
  printable text;
- a key appears once: TOML refuses a repeated key itself, and JSON's silent "last
  one wins" is refused here.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import sys
import typing
import unicodedata
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_validator

from llmctl.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

M = TypeVar("M", bound="StrictModel")


# Field docstrings become descriptions (docs/config-reference.md, `llmctl schema`).
# Pydantic reads them by parsing each class's source when the class is created:
# ~60 ms that every login-node command would pay, so the `llmctl` program turns
# them off (LLMCTL_FIELD_DOCS=0) and `schema` turns them back on.
FIELD_DOCS = os.environ.get("LLMCTL_FIELD_DOCS", "1") != "0"


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, field docstrings become docs."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=FIELD_DOCS,
        protected_namespaces=(),
        allow_inf_nan=False,  # a field that takes infinity says Field(allow_inf_nan=True)
    )

    @model_validator(mode="before")
    @classmethod
    def _arrays_as_tuples(cls, data: Any) -> Any:
        # Files give arrays as lists; files are validated strictly, and a strict
        # tuple field takes only a tuple.
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if isinstance(data.get(name), list) and _is_tuple(field.annotation):
                    data = {**data, name: tuple(data[name])}
        return data

    def to_data(self) -> dict[str, Any]:
        """Plain data for TOML/JSON output (None values dropped: TOML has no null)."""
        return self.model_dump(mode="json", exclude_none=True)


# --- reading files -------------------------------------------------------------

def read_data(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict, or raise ConfigError saying why not."""
    p = Path(path)
    name = str(path)
    problem = file_problem(p)
    if problem:
        raise ConfigError(name, [problem])
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(name, [f"unsupported file type {suffix or '(none)'!r}; use .toml or .json"])
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(name, [f"not UTF-8 text (byte {e.start})"]) from e
    except OSError as e:
        raise ConfigError(name, [_os_problem(e)]) from e
    return parse_text(text, suffix.lstrip("."), name)


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as a config file, or None when it is a regular file.

    Each cause has its own words: "file not found", "is a directory", "symlink loop",
    "broken symlink", "permission denied", "not a regular file".
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ENOENT and os.path.islink(p):
            return f"broken symlink: it points to {os.readlink(p)!r}, which does not exist"
        return _os_problem(e)
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, expected a .toml or .json file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a device, socket or pipe), expected a .toml or .json file"
    return None


def _os_problem(e: OSError) -> str:
    """An OSError from finding or reading a file, in a user's words."""
    words = {
        errno.ENOENT: "file not found",
        errno.ELOOP: "symlink loop: the path's symlinks point at each other",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "file not found (a part of the path is not a directory)",
        errno.ENAMETOOLONG: "file name too long",
        errno.EISDIR: "is a directory, expected a .toml or .json file",
    }
    return words.get(e.errno) or f"cannot read: {e.strerror or e}"


def parse_text(text: str, fmt: str, name: str) -> dict[str, Any]:
    """Parse TOML or JSON text; `name` is used in error messages."""
    repeated: dict[int, list[str]] = {}  # id(JSON object) -> keys given more than once

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            keys = [k for k, _ in items]
            repeated[id(obj)] = sorted({k for k in keys if keys.count(k) > 1})
        return obj

    try:
        if fmt == "toml":
            data = tomllib.loads(text)  # refuses a repeated key itself
        else:
            data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                              object_pairs_hook=pairs)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(name, [f"malformed TOML: {e}"]) from e
    except json.JSONDecodeError as e:
        raise ConfigError(name, [f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})"]) from e
    except ValueError as e:  # NaN/Infinity in JSON, or int too large
        raise ConfigError(name, [f"malformed {fmt.upper()}: {e}"]) from e
    except RecursionError as e:
        raise ConfigError(name, [f"malformed {fmt.upper()}: nested too deeply"]) from e
    if not isinstance(data, dict):
        raise ConfigError(name, [f"top level must be a table/object, got {type(data).__name__}"])
    if repeated:
        raise ConfigError(name, _repeated_keys(data, repeated))
    return data


def _repeated_keys(data: Any, repeated: dict[int, list[str]], loc: tuple[Any, ...] = ()) -> list[str]:
    out = [f"{key_path(loc + (k,))}: key {k!r} is given more than once (JSON would keep the last silently)"
           for k in repeated.get(id(data), [])]
    children = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in children:
        if isinstance(v, (dict, list)):
            out += _repeated_keys(v, repeated, loc + (k,))
    return out


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token} is too large for a float")
    return value


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_names(env: dict[str, str]) -> dict[str, str]:
    """Validator for environment tables: every key must be a valid variable name."""
    bad = [k for k in env if not _ENV_NAME.fullmatch(k)]
    if bad:
        raise ValueError(f"not valid environment variable names: {', '.join(map(repr, bad))}")
    return env


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a valid JSON number")


def load_config(path: str | Path, model: type[M]) -> M:
    """Read `path` and validate it as `model`; errors name file, key path and problem."""
    return validate_data(read_data(path), model, str(path))


def validate_data(data: dict[str, Any], model: type[M], name: str) -> M:
    """Validate already-parsed data as `model`; `name` labels the errors.

    Validation is strict (an integer field takes only an integer, a boolean only
    true/false); models built in Python keep pydantic's usual conversions.
    """
    found = scan_values(data)
    try:
        cfg = model.model_validate(data, strict=True)
    except ValidationError as e:
        seen = {where for where, _ in found}
        lines = [line for where, line in _validation_lines(e, model) if where not in seen]
        raise ConfigError(name, [line for _, line in found] + lines) from e
    except RecursionError as e:
        raise ConfigError(name, ["nested too deeply"]) from e
    if found:
        raise ConfigError(name, [line for _, line in found])
    return cfg


# --- what any value in a file may hold -------------------------------------------

INT64 = (-2**63, 2**63 - 1)

# Characters that reorder the text around them: a terminal shows other text than the file holds.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

_CONTROL_NAMES = {0x00: "NULL", 0x07: "BELL", 0x08: "BACKSPACE", 0x09: "TAB", 0x0A: "LINE FEED",
                  0x0B: "LINE TABULATION", 0x0C: "FORM FEED", 0x0D: "CARRIAGE RETURN", 0x1B: "ESCAPE",
                  0x7F: "DELETE", 0x85: "NEXT LINE", 0x9B: "CONTROL SEQUENCE INTRODUCER"}


def describe_char(ch: str) -> str:
    """'U+202E RIGHT-TO-LEFT OVERRIDE (a bidirectional control character)'."""
    code = ord(ch)
    name = unicodedata.name(ch, "") or _CONTROL_NAMES.get(code, "")
    cat = unicodedata.category(ch)
    kind = ("a bidirectional control character" if ch in BIDI_CONTROLS
            else {"Cc": "a control character", "Cs": "a lone surrogate", "Cf": "an invisible format character",
                  "Zl": "a line separator", "Zp": "a paragraph separator", "Co": "a private-use character",
                  "Cn": "an unassigned code point"}.get(cat, "a character that is not allowed here"))
    return f"U+{code:04X}{' ' + name if name else ''} ({kind})"


def bad_char(text: str, allow: str = "\t\n\r") -> tuple[int, str] | None:
    """The first control character, lone surrogate or bidi control in `text` (not in `allow`)."""
    for i, ch in enumerate(text):
        if ch in allow:
            continue
        if ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs"):
            return i, ch
    return None


def scan_values(data: Any, loc: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    """(key path, problem) for what no config file may hold, whatever its kind.

    Strings may keep tab and line breaks (eval templates use them); keys may not.
    """
    out: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            where = loc + (k,)
            found = bad_char(k, allow="") if isinstance(k, str) else None
            if found:
                out.append((key_path(where), f"{key_path(where)}: the key contains {describe_char(found[1])} "
                                             f"at position {found[0]}"))
            out += scan_values(v, where)
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            out += scan_values(v, loc + (i,))
    elif isinstance(data, str):
        found = bad_char(data)
        if found:
            out.append((key_path(loc), f"{key_path(loc)}: contains {describe_char(found[1])} at position "
                                       f"{found[0]}; config text may not hold control or bidirectional "
                                       "override characters"))
    elif isinstance(data, int) and not isinstance(data, bool):
        if not INT64[0] <= data <= INT64[1]:
            out.append((key_path(loc), f"{key_path(loc)}: {data} does not fit in a 64-bit integer "
                                       "(TOML's range, about ±9.2e18)"))
    return out


NAME_MAX = 200


def check_name(value: str) -> str:
    """A name that lands in files, scripts or terminals: plain printable text."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > NAME_MAX:
        raise ValueError(f"is {len(value)} characters long; at most {NAME_MAX}")
    for i, ch in enumerate(value):
        if ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise ValueError(f"contains {describe_char(ch)} at position {i}; a name must be printable text")
    if value != value.strip():
        raise ValueError(f"{value!r} starts or ends with whitespace")
    return value


Name = Annotated[str, AfterValidator(check_name)]
"""A name that lands in files, scripts or terminals (model, site, data, suite and task names)."""


# --- error messages -----------------------------------------------------------

def key_path(loc: tuple[Any, ...]) -> str:
    """('gpu', 'devices', 0, 'name') -> 'gpu.devices[0].name'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if not text.isprintable():  # a hostile key is shown escaped, never raw
                text = repr(text)
            out += ("." if out else "") + text
    return out or "(top level)"


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per problem: 'key.path: what is wrong'."""
    return [line for _, line in _validation_lines(err, model)]


def _validation_lines(err: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """(key path, 'key.path: what is wrong') for each problem."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        kind = e["type"]
        where = key_path(loc)
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = ", ".join(parent.model_fields) if parent else "?"
            inside = key_path(loc[:-1])
            inside = "" if inside == "(top level)" else f" in [{inside}]"
            near = _near(loc[-1], parent, model)
            lines.append((where, f"{where}: unknown key {loc[-1]!r}{inside}{near}; valid keys: {valid}"))
        elif kind == "missing":
            lines.append((where, f"{where}: required key is missing"))
        elif kind in _TYPE_WORDS:
            lines.append((where, f"{where}: expected {_TYPE_WORDS[kind]}, got {_describe_input(e.get('input'))}"))
        else:
            msg = e["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            elif msg.startswith("Assertion failed, "):
                msg = msg[len("Assertion failed, "):]
            # A rule of the model's own (value/assertion error) already names its keys
            # and values; echoing the input would print the whole table.
            shown = "" if kind in ("value_error", "assertion_error") else _short_input(e.get("input"))
            lines.append((where, f"{where}: {msg}{shown}" if loc else f"{msg}{shown}"))
    return lines


def _near(key: Any, parent: type[BaseModel] | None, root: type[BaseModel]) -> str:
    """' (did you mean 'max_steps'?)' for a key close to a valid one of its table, as CLI typos
    get; else a key of that name (or near it) in another table of the file, by its key path."""
    import difflib

    word = str(key)
    ratio = lambda other: difflib.SequenceMatcher(None, word, other).ratio()  # noqa: E731
    # A key of its own table at 0.6 (difflib's default), one elsewhere only when nearer.
    here = [(ratio(k), k) for k in (parent.model_fields if parent else ()) if ratio(k) >= 0.6]
    paths = _key_paths(root)
    there = [(ratio(k), p) for k, p in paths.items() if ratio(k) >= 0.8 and "." in p]
    best = max(here + there, key=lambda c: (c[0], c in here), default=None)
    return f" (did you mean {best[1]!r}?)" if best else ""


def _key_paths(model: type[BaseModel], prefix: str = "", depth: int = 0) -> dict[str, str]:
    """Each key of a model's nested tables (not lists or dicts of them) -> its first key path."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        out.setdefault(key, prefix + key)
        sub, container = _unwrap(field.annotation)
        if sub is not None and container is None and depth < 3:
            for k, v in _key_paths(sub, f"{prefix}{key}.", depth + 1).items():
                out.setdefault(k, v)
    return out


# Strict validation's type errors, in words that say what the file should hold.
_TYPE_WORDS = {"int_type": "an integer", "bool_type": "true or false", "float_type": "a number",
               "string_type": "text", "list_type": "an array", "tuple_type": "an array",
               "dict_type": "a table", "model_type": "a table"}


def _describe_input(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, float):
        return f"{value!r} (a float)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return _short_input(value)[len(" (got "):-1]


def _short_input(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f" (got {type(value).__name__})"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f" (got {text})"


def _is_tuple(annotation: Any) -> bool:
    """A tuple annotation, or an Optional one."""
    if typing.get_origin(annotation) is tuple:
        return True
    return any(typing.get_origin(a) is tuple for a in typing.get_args(annotation))


def _unwrap(annotation: Any) -> tuple[type[BaseModel] | None, str | None]:
    """Find the model inside an annotation; also say if it sits in a list or dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset):
        found, _ = _first_model(args)
        return found, "list"
    if origin is dict:
        found, _ = _first_model(args[1:])
        return found, "dict"
    return _first_model(args)


def _first_model(args: tuple[Any, ...]) -> tuple[type[BaseModel] | None, str | None]:
    for a in args:
        found, container = _unwrap(a)
        if found is not None:
            return found, container
    return None, None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that validates the value at `loc` (to list its valid keys)."""
    current: type[BaseModel] | None = model
    skip = False
    for part in loc:
        if skip:
            skip = False
            continue
        if current is None or isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        current, container = _unwrap(field.annotation)
        skip = container == "dict"
    return current
