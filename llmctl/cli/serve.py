"""`llmctl serve`: the OpenAI-compatible server and batch jobs (issue #9)."""

from __future__ import annotations

import click

from llmctl.cli.common import not_implemented


@click.group("serve")
def group() -> None:
    """Serve a model (OpenAI-compatible HTTP) or run batch inference."""


@group.command("start")
@click.option("--artifact", required=True, type=click.Path(), help="Model artifact folder.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Serve config (TOML).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--scheduler", default="vllm-like", show_default=True,
              help="vllm-like, fcfs, or a plugin name.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=8192, show_default=True)
@click.option("--api-key-env", help="Environment variable holding the bearer key.")
def start(**kwargs) -> None:
    """Start the server."""
    not_implemented("serve start", 9)


@group.command("batch")
@click.option("--artifact", required=True, type=click.Path(), help="Model artifact folder.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Requests (OpenAI batch JSONL).")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Results (OpenAI batch JSONL).")
def batch(**kwargs) -> None:
    """Answer a file of requests (resumable)."""
    not_implemented("serve batch", 9)
