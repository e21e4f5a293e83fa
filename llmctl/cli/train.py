"""`llmctl train`: render and launch training jobs (issue #5)."""

from __future__ import annotations

import click

from llmctl.cli.common import not_implemented

LAUNCHERS = ("local", "slurm", "pbs", "mpi", "k8s")


@click.group("train")
def group() -> None:
    """Launch distributed training."""


@group.command("launch")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan file.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Training config (TOML).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), help="Data config (TOML).")
@click.option("--launcher", type=click.Choice(LAUNCHERS), default="local", show_default=True,
              help="Where the job runs.")
@click.option("--site", default=None, help="Site-config (name or path).")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes.")
@click.option("--gpus-per-node", type=click.IntRange(min=0), help="GPUs per node.")
@click.option("--time", "time_limit", help="Time limit, e.g. 04:00:00.")
@click.option("--name", help="Job name.")
@click.option("--after", help="Start after this job id completes (afterok).")
@click.option("--dry-run", is_flag=True, help="Print the script; submit nothing.")
def launch(**kwargs) -> None:
    """Render the job script for a plan and submit it."""
    not_implemented("train launch", 5)
