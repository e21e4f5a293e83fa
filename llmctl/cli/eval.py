"""`llmctl eval`: evaluate checkpoints (issue #8)."""

from __future__ import annotations

import click

from llmctl.cli.common import not_implemented


@click.group("eval")
def group() -> None:
    """Evaluate checkpoints on perplexity and task suites."""


@group.command("run")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint folder or file.")
@click.option("--suite", type=click.Path(dir_okay=False), help="Eval suite (TOML).")
@click.option("--tasks", help="Comma-separated tasks (a subset of the suite, or built-ins).")
@click.option("--output", type=click.Path(dir_okay=False), help="Results JSON.")
@click.option("--limit", type=click.IntRange(min=1), help="Documents per task.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size.")
@click.option("--log-samples", is_flag=True, help="Write per-sample logs.")
def run(**kwargs) -> None:
    """Evaluate one checkpoint."""
    not_implemented("eval run", 8)


@group.command("watch")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Training run folder.")
@click.option("--suite", type=click.Path(dir_okay=False), help="Eval suite (TOML).")
@click.option("--submit", is_flag=True, help="Submit each evaluation as a job.")
def watch(**kwargs) -> None:
    """Evaluate every complete checkpoint not yet evaluated (cron-safe)."""
    not_implemented("eval watch", 8)


@group.command("schedule")
@click.option("--every", required=True, help="Interval, e.g. 1h.")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Training run folder.")
@click.option("--suite", type=click.Path(dir_okay=False), help="Eval suite (TOML).")
@click.option("--launcher", type=click.Choice(["slurm", "cron"]), default="cron", show_default=True)
def schedule(**kwargs) -> None:
    """Print or install a scrontab/crontab entry that runs the watcher."""
    not_implemented("eval schedule", 8)
