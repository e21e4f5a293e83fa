"""Helpers shared by the CLI modules: `--json`, job options, printing data, path arguments."""

from __future__ import annotations

import json
import shlex
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")

LAUNCHERS = ("local", "slurm", "pbs", "mpi", "k8s")


def job_options(f):
    """The options of every command that renders and submits a job (`train launch`, `serve launch`)."""
    options = [
        click.option("--launcher", type=click.Choice(LAUNCHERS), default="local", show_default=True,
                     help="Where the job runs."),
        click.option("--site", default=None, help="Site-config (name or path)."),
        click.option("--partition", help="Partition or queue (default: the site's)."),
        click.option("--time", "time_limit", help="Time limit, e.g. 04:00:00."),
        click.option("--name", help="Job name."),
        click.option("--after", multiple=True,
                     help="Start after another job: its id (it must succeed: afterok), or TYPE:ID[:ID...] "
                          "with TYPE after, afterok, afternotok or afterany; repeatable. Local and MPI jobs "
                          "wait for a local job; Kubernetes cannot and refuses it."),
        click.option("--run-dir", type=click.Path(file_okay=False), help="Run folder (default: runs/NAME-TIME)."),
        click.option("--dry-run", is_flag=True, help="Write the run folder and print the script; submit nothing."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def print_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as an aligned text table."""
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        click.echo("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def report(run, dry, dry_run, submit_run) -> None:
    """Print the script (dry run) or submit it: the end of every job-making command."""
    if dry_run:
        click.echo(dry.script, nl=False)
        click.echo(f"# dry run: nothing submitted. Run folder: {run.path}", err=True)
        click.echo(f"# review it, then: llmctl job submit {shlex.quote(str(run.path))}", err=True)
        return
    _, job_id = submit_run(run.path)
    click.echo(f"submitted {dry.spec.backend} job {job_id}: {run.path}")
