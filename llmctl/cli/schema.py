"""`llmctl schema`: JSON Schema of every config file kind, and checking a file against it."""

from __future__ import annotations

import click

from llmctl.cli.common import print_json, print_table


@click.command("schema")
@click.argument("kind", required=False)
@click.option("--check", "check_files", multiple=True, type=click.Path(dir_okay=False),
              help="Validate FILE as KIND instead of printing the schema (repeatable).")
def command(kind: str | None, check_files: tuple[str, ...]) -> None:
    """Print the JSON Schema of a config KIND (no KIND: list the kinds).

    \b
    Examples:
      llmctl schema train
      llmctl schema model --check configs/models/llama-7b.json
    """
    import os

    os.environ["LLMCTL_FIELD_DOCS"] = "1"  # the schema carries the fields' descriptions
    from llmctl.config import KINDS, json_schema, load

    if kind is None:
        print_table([{"kind": k, "formats": ", ".join(v[2]), "describes": v[3]} for k, v in KINDS.items()],
                    ["kind", "formats", "describes"])
        return
    if check_files:
        for path in check_files:
            load(kind, path)
            click.echo(f"ok: {path} is a valid {kind} file")
        return
    print_json(json_schema(kind))
