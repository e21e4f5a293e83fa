"""Generate the reference docs from the code, so they cannot drift from it.

`python -m llmctl.docgen write` rewrites docs/config-reference.md (from the config
models) and docs/cli-reference.md (from the commands' `--help`);
`python -m llmctl.docgen check` exits 1 with a diff when either is stale (a test
runs the check).
"""

from __future__ import annotations

import difflib
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts)
    if origin in (list, tuple, set):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"list[{inner}]" if origin is not tuple else f"[{inner}]"
    if origin is dict:
        return f"table of {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    d = field.default
    if d is PydanticUndefined or d is None:
        return ""
    if isinstance(d, BaseModel):
        return ""
    if isinstance(d, (dict, list, tuple)) and not d:
        return ""
    return f"`{d!r}`".replace("'", '"').replace("True", "true").replace("False", "false")


def _rows(model: type[BaseModel], prefix: str, out: list[str], nested: list[tuple[str, type[BaseModel]]]) -> None:
    from llmctl.config.base import _unwrap

    for name, field in model.model_fields.items():
        sub, container = _unwrap(field.annotation)
        key = f"{prefix}{field.alias or name}"  # the key as written (`init.from`, not `from_`)
        desc = " ".join((field.description or "").split())
        if sub is not None:
            shape = {"list": f"[[{key}]]", "dict": f"[{key}.NAME]", None: f"[{key}]"}[container]
            nested.append((shape, sub, key, container))
            desc = f"{desc} See `{shape}`." if desc else f"See `{shape}`."
        out.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")


def config_reference() -> str:
    """Markdown for every config kind."""
    from llmctl.config import KINDS, model_class

    lines = ["# Configuration reference", "",
             "Generated from llmctl's config models by `make docs` (`python -m llmctl.docgen write`); "
             "do not edit by hand. `llmctl schema KIND` prints the same as JSON Schema.", "",
             "Unknown keys are errors; every error names the file, the key path and the problem.", ""]
    for kind, (_, _, formats, describes) in KINDS.items():
        model = model_class(kind)
        lines += [f"## `{kind}`: {describes}", "", f"Formats: {', '.join(formats)}.", ""]
        doc = " ".join((model.__doc__ or "").split())
        if doc:
            lines += [doc, ""]
        queue: list[Any] = [("(top level)", model, "", None)]
        seen: set[str] = set()
        while queue:
            shape, sub, key, container = queue.pop(0)
            if key in seen:
                continue
            seen.add(key)
            if key:
                lines += [f"### `{shape}`", ""]
                sdoc = " ".join((sub.__doc__ or "").split())
                if sdoc:
                    lines += [sdoc, ""]
            lines += ["| key | type | default | description |", "|---|---|---|---|"]
            nested: list[Any] = []
            prefix = f"{key}." if key and container is None else (f"{key}[]." if container == "list" else (f"{key}.NAME." if key else ""))
            _rows(sub, prefix, lines, nested)
            lines.append("")
            queue.extend(nested)
    return "\n".join(lines).rstrip() + "\n"


def cli_reference() -> str:
    """Markdown of every command's --help."""
    import click

    from llmctl.cli import cli

    lines = ["# CLI reference", "",
             "Generated from `llmctl ... --help` by `make docs` (`python -m llmctl.docgen write`); "
             "do not edit by hand.", ""]

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        # Each context has its parent, as when a user runs the command: settings such as
        # the root's help option names (-h, --help) are inherited, not defaulted.
        extra = dict(cli.context_settings, terminal_width=100, max_content_width=100) if parent is None else {}
        ctx = click.Context(cmd, info_name=path[-1], parent=parent, **extra)
        # click caches a command's help option from the first context it sees; a caller
        # that built one without the parent chain (a test, say) must not change the docs.
        if getattr(cmd, "_help_option", None) is not None:
            cmd._help_option = None
        lines.extend([f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`", "", "```text",
                      cmd.get_help(ctx).rstrip(), "```", ""])
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), path + [name], ctx)

    walk(cli, ["llmctl"], None)
    return "\n".join(lines).rstrip() + "\n"


GENERATED = {"config-reference.md": config_reference, "cli-reference.md": cli_reference}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("write", "check"):
        print("usage: python -m llmctl.docgen write|check", file=sys.stderr)
        return 2
    stale = 0
    for name, fn in GENERATED.items():
        path = DOCS / name
        new = fn()
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if argv[0] == "write":
            if new != old:
                from llmctl.fsutil import atomic_write_text

                atomic_write_text(path, new)
                print(f"wrote {path}")
        elif new != old:
            stale += 1
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                       f"{path} (committed)", f"{path} (generated)"))
    if stale:
        print(f"\n{stale} generated doc(s) are stale: run `make docs`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
