"""`llmctl schema`: JSON Schema of every config file kind."""

from __future__ import annotations

import click

from llmctl.cli.common import print_json, print_table


@click.command("schema")
@click.argument("kind", required=False)
def command(kind: str | None) -> None:
    """Print the JSON Schema of a config KIND (no KIND: list the kinds)."""
    from llmctl.config import KINDS, json_schema

    if kind is None:
        print_table([{"kind": k, "formats": ", ".join(v[2]), "describes": v[3]} for k, v in KINDS.items()],
                    ["kind", "formats", "describes"])
        return
    print_json(json_schema(kind))
