"""`llmctl plan`: the parallelism plan (issue #4)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, not_implemented


@click.group("plan")
def group() -> None:
    """Compute and explain parallelism plans."""


@group.command("compute")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Model config (JSON).")
@click.option("--hardware", type=click.Path(dir_okay=False), help="Hardware profile (TOML/JSON).")
@click.option("--site", default=None, help="Site-config for the node shape.")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), help="GPUs per node.")
@click.option("--seq-len", type=click.IntRange(min=1), help="Sequence length.")
@click.option("--global-batch", type=click.IntRange(min=1), help="Sequences per optimizer step.")
@click.option("--target-flops", type=float, help="FLOP/s ceiling the plan may assume.")
@click.option("--max-memory-gb", type=click.FloatRange(min=0, min_open=True), help="Memory per GPU to plan for.")
@click.option("--max-comm-bw-gbps", type=click.FloatRange(min=0, min_open=True),
              help="Communication bandwidth ceiling in GB/s.")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True),
              help="Peak TFLOP/s per GPU, for GPUs the table does not know.")
@click.option("--strategy", type=click.Choice(["auto", "manual"]), default="auto", show_default=True,
              help="auto: solve; manual: cost the given layout.")
@click.option("--tp", type=click.IntRange(min=1))
@click.option("--pp", type=click.IntRange(min=1))
@click.option("--dp", type=click.IntRange(min=1))
@click.option("--cp", type=click.IntRange(min=1))
@click.option("--vpp", type=click.IntRange(min=1))
@click.option("--micro-batch", type=click.IntRange(min=1))
@click.option("--zero-stage", type=click.IntRange(0, 3))
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]))
@click.option("--top", type=click.IntRange(min=0), default=3, show_default=True, help="Alternatives to keep.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the plan (TOML) here.")
@json_option
def compute(**kwargs) -> None:
    """Solve the parallelism plan as an integer linear program."""
    not_implemented("plan compute", 4)


@group.command("explain")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--png", type=click.Path(dir_okay=False), help="Write the picture here.")
@json_option
def explain(plan_file, png, as_json) -> None:
    """Show a plan as tables and a picture."""
    not_implemented("plan explain", 4)
