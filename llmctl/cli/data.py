"""`llmctl data`: tokenize a corpus into HDF5 shards (issue #6)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, not_implemented


@click.group("data")
def group() -> None:
    """Prepare training data."""


@group.command("prepare")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Data config (TOML).")
@click.option("--workers", type=click.IntRange(min=1), help="Tokenizer processes (default: CPUs).")
@json_option
def prepare(config_path, workers, as_json) -> None:
    """Tokenize sources into HDF5 token shards."""
    not_implemented("data prepare", 6)
