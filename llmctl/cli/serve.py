"""`llmctl serve`: the OpenAI-compatible server and batch jobs (issue #9)."""

from __future__ import annotations

import click

from llmctl.cli.common import job_options, json_option, print_json, report


@click.group("serve")
def group() -> None:
    """Serve a model (OpenAI-compatible HTTP) or run batch inference."""


def _resolved(ctx: click.Context, config_path, **flags):
    """(ServeConfig, resolved document): flag given on the command line > serve config file >
    defaults, with each setting's source (llmctl/serve/resolved.py)."""
    from click.core import ParameterSource

    from llmctl.serve.resolved import document, resolve

    given = {k: (v, ctx.get_parameter_source(k) != ParameterSource.DEFAULT) for k, v in flags.items()}
    cfg, table = resolve(config_path, given)
    return cfg, document(config_path, table)


def _settings(ctx: click.Context, config_path, **flags):
    return _resolved(ctx, config_path, **flags)[0]


@group.command("start")
@click.option("--artifact", required=True, type=click.Path(), help="Model artifact folder.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Serve config (TOML).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="TCP port to listen on.")
@click.option("--scheduler", default="vllm-like", show_default=True,
              help="vllm-like, fcfs, or a plugin name.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Most tokens (prompt chunks and one per decoding sequence) one engine step computes; "
                   "bounds a step's memory and latency.")
@click.option("--api-key-env", help="Environment variable holding the bearer key.")
@click.option("--max-queue", type=click.IntRange(min=1), help="Waiting requests before answering 429.")
@click.option("--prefix-caching/--no-prefix-caching", default=None,
              help="Reuse the KV blocks of prompt prefixes across requests [default: on].")
@click.option("--mpi-mode", type=click.Choice(["tp", "dp"]), default="tp", show_default=True,
              help="Under MPI: tensor-parallel shards, or data-parallel replicas that rank 0 routes to.")
@click.pass_context
def start(ctx: click.Context, config_path, **flags) -> None:
    """Start the server.

    Each setting comes from its flag when given, else the --config file, else the
    default; the server prints every one with its source as it starts (in a job, also
    to RUN/serve-resolved.json).
    """
    from llmctl.serve.start import serve

    settings, resolved = _resolved(ctx, config_path, **flags)
    serve(settings, resolved)


@group.command("batch")
@click.option("--artifact", required=True, type=click.Path(), help="Model artifact folder.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Requests (OpenAI batch JSONL).")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Results (OpenAI batch JSONL).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Serve config (TOML).")
@click.option("--scheduler", default="vllm-like", show_default=True,
              help="vllm-like, fcfs, or a plugin name.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Most tokens (prompt chunks and one per decoding sequence) one engine step computes; "
                   "bounds a step's memory and latency.")
@click.option("--prefix-caching/--no-prefix-caching", default=None,
              help="Reuse the KV blocks of prompt prefixes across requests [default: on].")
@json_option
@click.pass_context
def batch(ctx: click.Context, input_path, output_path, config_path, as_json, **flags) -> None:
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
    if as_json:
        print_json({"output": str(output_path), "counts": counts})
        return
    click.echo(f"serve batch: {counts['answered']} answered, {counts['errors']} errors, "
               f"{counts['skipped']} already done (of {counts['total']}) -> {output_path}")



@group.command("launch")
@click.option("--kind", type=click.Choice(["persistent", "batch"]), default="persistent", show_default=True,
              help="persistent: a server that writes RUN/endpoint.json; batch: answer --input into --output.")
@click.option("--artifact", required=True, type=click.Path(), help="Model artifact folder.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), help="batch: requests (OpenAI batch JSONL).")
@click.option("--output", "output_path", type=click.Path(dir_okay=False), help="batch: results (OpenAI batch JSONL).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="persistent: the port to listen on.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Serve config (TOML).")
@job_options
@json_option
@click.option("--gpus-per-node", type=click.IntRange(min=0),
              help="GPUs per node (CPU ranks on a partition without GPUs). A persistent server on "
                   "more than one rank in all runs them as MPI ranks, started by the site's mpirun.")
@click.option("--nodes", type=click.IntRange(min=1), help="persistent: nodes for the server's MPI ranks.")
@click.option("--mpi-mode", type=click.Choice(["tp", "dp"]),
              help="persistent, several ranks: tensor-parallel shards (tp, the server's default) or "
                   "data-parallel replicas (dp).")
def launch(kind, artifact, input_path, output_path, port, config_path, launcher, site, partition,
           gpus_per_node, nodes, mpi_mode, time_limit, name, after, run_dir, dry_run, settings,
           as_json=False) -> None:
    """Render a serving job (a persistent server or a batch job) and submit it."""
    import shlex
    import sys
    from pathlib import Path

    from llmctl.errors import LlmctlError
    from llmctl.jobs.launch import prepare_serve_job, submit_run

    if kind == "batch" and not (input_path and output_path):
        raise LlmctlError("--kind batch needs --input and --output")
    if kind == "persistent" and (input_path or output_path):
        raise LlmctlError("--input/--output are for --kind batch; a persistent server answers HTTP")
    if not Path(artifact).is_dir():
        raise LlmctlError(f"--artifact {artifact}: artifact folder not found")
    if not (Path(artifact) / "config.json").is_file():  # fail here, not in the queue hours later
        raise LlmctlError(f"--artifact {artifact}: not an artifact folder (no config.json)",
                          hint="make one with `llmctl export --checkpoint RUN --out artifacts/NAME`")
    if input_path and not Path(input_path).is_file():
        raise LlmctlError(f"--input {input_path}: file not found")
    # the job runs elsewhere (another cwd, another node): every path absolute
    absolute = [str(Path(p).absolute()) if p else None for p in (artifact, input_path, output_path, config_path)]
    run, dry = prepare_serve_job(
        kind=f"serve-{kind}", artifact=absolute[0], input_path=absolute[1], output_path=absolute[2],
        port=port, config_path=absolute[3], launcher=launcher, site=site, time_limit=time_limit, name=name,
        after=after, partition=partition, gpus_per_node=gpus_per_node, nodes=nodes, mpi_mode=mpi_mode,
        run_dir=run_dir,
        command=shlex.join(["llmctl", *sys.argv[1:]]), settings=settings)
    report(run, dry, dry_run, submit_run, as_json)
    if kind == "persistent" and not dry_run and not as_json:
        click.echo(f"the server writes its address to {run.endpoint_file} once it listens", err=True)
