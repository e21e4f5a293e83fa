"""`llmctl serve`: the OpenAI-compatible server and batch jobs (issue #9)."""

from __future__ import annotations

import click


@click.group("serve")
def group() -> None:
    """Serve a model (OpenAI-compatible HTTP) or run batch inference."""


def _settings(ctx: click.Context, config_path, **flags):
    """Flag given on the command line > serve config file > defaults."""
    from click.core import ParameterSource

    from llmctl.config.base import load_config
    from llmctl.config.serve import ServeConfig

    cfg = load_config(config_path, ServeConfig) if config_path else ServeConfig()
    data = cfg.model_dump()
    for key, value in flags.items():
        if value is not None and (ctx.get_parameter_source(key) != ParameterSource.DEFAULT
                                  or not config_path or data.get(key) is None):
            data[key] = value
    return ServeConfig(**data)


@group.command("start")
@click.option("--artifact", required=True, type=click.Path(), help="Model artifact folder.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Serve config (TOML).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--scheduler", default="vllm-like", show_default=True,
              help="vllm-like, fcfs, or a plugin name.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=8192, show_default=True)
@click.option("--api-key-env", help="Environment variable holding the bearer key.")
@click.option("--max-queue", type=click.IntRange(min=1), help="Waiting requests before answering 429.")
@click.option("--mpi-mode", type=click.Choice(["tp", "dp"]), default="tp", show_default=True,
              help="Under MPI: tensor-parallel shards, or data-parallel replicas that rank 0 routes to.")
@click.pass_context
def start(ctx: click.Context, config_path, **flags) -> None:
    """Start the server."""
    from llmctl.serve.start import serve

    serve(_settings(ctx, config_path, **flags))


@group.command("batch")
@click.option("--artifact", required=True, type=click.Path(), help="Model artifact folder.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Requests (OpenAI batch JSONL).")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Results (OpenAI batch JSONL).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Serve config (TOML).")
@click.option("--scheduler", default="vllm-like", show_default=True,
              help="vllm-like, fcfs, or a plugin name.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=8192, show_default=True)
@click.pass_context
def batch(ctx: click.Context, input_path, output_path, config_path, **flags) -> None:
    """Answer a file of requests (resumable)."""
    from pathlib import Path

    from llmctl.errors import LlmctlError
    from llmctl.serve.batch import read_requests, run_batch
    from llmctl.serve.start import build_engine, extra_rank

    if extra_rank():  # several processes per job: rank 0 answers the file, once
        click.echo("serve batch: not rank 0: nothing to do on this rank")
        return
    settings = _settings(ctx, config_path, **flags)
    if not Path(settings.artifact).is_dir():
        raise LlmctlError(f"--artifact {settings.artifact}: artifact folder not found")
    read_requests(Path(input_path))  # bad input fails before the model loads
    art, eng = build_engine(settings, settings.artifact)
    counts = run_batch(eng, art.name, input_path, output_path, settings)
    click.echo(f"serve batch: {counts['answered']} answered, {counts['errors']} errors, "
               f"{counts['skipped']} already done (of {counts['total']}) -> {output_path}")
