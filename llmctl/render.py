"""The one Jinja environment llmctl renders with (scaffold files, job scripts).

StrictUndefined turns a missing variable into an error instead of an empty string;
`shq` is the one filter for anything that lands in a shell script; `toml` writes
a value as a TOML literal.
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from typing import Any

from llmctl.errors import LlmctlError


def shq(value: Any) -> str:
    """Quote a value for POSIX shell: it can never run as a command."""
    if value is None:
        raise LlmctlError("a value that must appear in a shell script is missing (None)")
    return shlex.quote(str(value))


def toml_value(value: Any) -> str:
    """A TOML literal for `value` (strings quoted and escaped, lists inline)."""
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


@lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja environment over llmctl's templates folder."""
    import jinja2

    from llmctl.resources import data_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["shq"] = shq
    env.filters["toml"] = toml_value
    return env


def render(template: str, **context: Any) -> str:
    """Render `template` (a path under templates/) with `context`."""
    import jinja2

    try:
        return environment().get_template(template).render(**context)
    except jinja2.TemplateNotFound as e:
        raise LlmctlError(f"template not found: {e.name}") from e
    except jinja2.UndefinedError as e:
        raise LlmctlError(f"template {template}: {e.message}") from e
