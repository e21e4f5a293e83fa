"""`llmctl data`: tokenize a corpus into HDF5 shards (issue #6)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, print_json


@click.group("data")
def group() -> None:
    """Prepare training data."""


@group.command("prepare")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Data config (TOML).")
@click.option("--workers", type=click.IntRange(min=1), help="Tokenizer processes (default: CPUs).")
@click.option("--force", is_flag=True, help="Prepare again even if the output is up to date.")
@json_option
def prepare(config_path, workers, force, as_json) -> None:
    """Tokenize sources into HDF5 token shards.

    Relative paths in the config (sources, output.dir, tokenizer.path) are taken
    from the current folder, the project folder. Re-running an unchanged config
    does nothing.
    """
    from llmctl.data.prepare import load_data_config
    from llmctl.data.prepare import prepare as run_prepare

    cfg = load_data_config(config_path)
    summary = run_prepare(cfg, config_path, workers=workers, progress=not as_json, force=force)
    if as_json:
        print_json(summary)
        return
    if summary["up_to_date"]:
        click.echo(f"{summary['output']}: up to date (nothing to do)")
        return
    t, d = summary["tokens"], summary["documents"]
    click.echo(f"{summary['output']}: {t['train']:,} train tokens ({d['train']} documents), "
               f"{t['val']:,} validation tokens ({d['val']} documents) in {summary['shards']} shard(s); "
               f"vocabulary {summary['vocab_size']} ({summary['dtype']}); "
               f"{summary['seconds']:.1f} s, {summary['tokens_per_s']:,} tokens/s")
