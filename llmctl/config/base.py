"""The base of every config model, and the one loader that reads config files.

Every file a user writes is parsed into a pydantic model that forbids unknown
keys. Whatever goes wrong — a missing file, malformed TOML or JSON, an unknown
key, a wrong type, a broken cross-field rule — becomes one `ConfigError` whose
lines each name the file, the key path and the problem.
"""

from __future__ import annotations

import json
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

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
    )

    def to_data(self) -> dict[str, Any]:
        """Plain data for TOML/JSON output (None values dropped: TOML has no null)."""
        return self.model_dump(mode="json", exclude_none=True)


# --- reading files -------------------------------------------------------------

def read_data(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict, or raise ConfigError saying why not."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise ConfigError(name, ["file not found"])
    if p.is_dir():
        raise ConfigError(name, ["is a folder, expected a .toml or .json file"])
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(name, [f"unsupported file type {suffix or '(none)'!r}; use .toml or .json"])
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(name, [f"not UTF-8 text (byte {e.start})"]) from e
    except OSError as e:
        raise ConfigError(name, [f"cannot read: {e.strerror or e}"]) from e
    return parse_text(text, suffix.lstrip("."), name)


def parse_text(text: str, fmt: str, name: str) -> dict[str, Any]:
    """Parse TOML or JSON text; `name` is used in error messages."""
    try:
        if fmt == "toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text, parse_constant=_reject_constant)
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
    return data


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_names(env: dict[str, str]) -> dict[str, str]:
    """Validator for environment tables: every key must be a valid variable name."""
    bad = [k for k in env if not _ENV_NAME.match(k)]
    if bad:
        raise ValueError(f"not valid environment variable names: {', '.join(map(repr, bad))}")
    return env


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a valid JSON number")


def load_config(path: str | Path, model: type[M]) -> M:
    """Read `path` and validate it as `model`; errors name file, key path and problem."""
    return validate_data(read_data(path), model, str(path))


def validate_data(data: dict[str, Any], model: type[M], name: str) -> M:
    """Validate already-parsed data as `model`; `name` labels the errors."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(name, format_validation_error(e, model)) from e
    except RecursionError as e:
        raise ConfigError(name, ["nested too deeply"]) from e


# --- error messages -----------------------------------------------------------

def key_path(loc: tuple[Any, ...]) -> str:
    """('gpu', 'devices', 0, 'name') -> 'gpu.devices[0].name'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per problem: 'key.path: what is wrong'."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        kind = e["type"]
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = ", ".join(parent.model_fields) if parent else "?"
            where = key_path(loc[:-1])
            where = "" if where == "(top level)" else f" in [{where}]"
            lines.append(f"{key_path(loc)}: unknown key {loc[-1]!r}{where}; valid keys: {valid}")
        elif kind == "missing":
            lines.append(f"{key_path(loc)}: required key is missing")
        else:
            msg = e["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            elif msg.startswith("Assertion failed, "):
                msg = msg[len("Assertion failed, "):]
            # A rule of the model's own (value/assertion error) already names its keys
            # and values; echoing the input would print the whole table.
            shown = "" if kind in ("value_error", "assertion_error") else _short_input(e.get("input"))
            lines.append(f"{key_path(loc)}: {msg}{shown}" if loc else f"{msg}{shown}")
    return lines


def _short_input(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f" (got {type(value).__name__})"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f" (got {text})"


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
