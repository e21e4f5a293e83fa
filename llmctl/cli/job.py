"""`llmctl job`: submit and track rendered jobs (issue #5)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, not_implemented


@click.group("job")
def group() -> None:
    """Submit, track and cancel jobs."""


@group.command("submit")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--allow-edited", is_flag=True, help="Submit even if the script changed since rendering.")
def submit(run_dir, allow_edited) -> None:
    """Submit a reviewed run folder exactly as rendered."""
    not_implemented("job submit", 5)


@group.command("status")
@click.argument("run", required=False)
@json_option
def status(run, as_json) -> None:
    """Show a job's state."""
    not_implemented("job status", 5)


@group.command("logs")
@click.argument("run")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
def logs(run, follow) -> None:
    """Print a job's logs."""
    not_implemented("job logs", 5)


@group.command("cancel")
@click.argument("run")
def cancel(run) -> None:
    """Cancel a job."""
    not_implemented("job cancel", 5)


@group.command("list")
@json_option
def list_(as_json) -> None:
    """List jobs llmctl knows about."""
    not_implemented("job list", 5)
