"""Helpers shared by the CLI modules: `--json`, job options, printing data, path arguments."""

from __future__ import annotations

import json
import shlex
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")

LAUNCHERS = ("local", "slurm", "pbs", "mpi", "k8s")


MAIL_TYPES = ("BEGIN", "END", "FAIL", "REQUEUE", "ALL", "TIME_LIMIT")
SETTINGS = ("account", "qos", "reservation", "mail_user", "mail_type", "overrides")


def _mail_types(ctx, param, value):
    if not value:
        return None
    types = [t.strip().upper() for t in value.split(",") if t.strip()]
    bad = [t for t in types if t not in MAIL_TYPES]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: not one of {', '.join(MAIL_TYPES)}")
    return types


def settings_options(f):
    """Per-user settings (also in ~/.config/llmctl/user.toml and ./llmctl.toml), gathered into one
    `settings` argument: flag > project file > user file > site-config."""
    import functools

    options = [
        click.option("--account", help="Account to charge (default: llmctl.toml, user.toml, then the site's)."),
        click.option("--qos", help="Quality of service."),
        click.option("--reservation", help="Reservation to run in (SLURM)."),
        click.option("--mail-user", help="Address the scheduler mails."),
        click.option("--mail-type", callback=_mail_types,
                     help=f"Comma-separated events that send mail: {', '.join(MAIL_TYPES)}."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a job setting (account, qos, reservation, partition, time, mail_user, "
                          "mail_type) or a site-config field by its key path, e.g. --set env.NCCL_DEBUG=INFO "
                          "or --set partitions.gpu.max_time=48:00:00; repeatable. VALUE is read as TOML "
                          "when it is a TOML value, else as text."),
    ]

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        kwargs["settings"] = {k: kwargs.pop(k) for k in SETTINGS}
        kwargs["settings"]["given"] = _defaulted(("launcher", "port"))  # for resolved.json's sources
        return f(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _defaulted(names: tuple[str, ...]) -> dict[str, str]:
    """The options among `names` that took their defaults (name -> "default")."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    return {n: "default" for n in names if n in ctx.params and ctx.get_parameter_source(n) == ParameterSource.DEFAULT}


def job_options(f):
    """The options of every command that renders and submits a job (`train launch`, `serve launch`)."""
    f = settings_options(f)
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
        click.option("--dry-run", is_flag=True,
                     help="Write the run folder and print the script (and where each setting came from); "
                          "submit nothing."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def print_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def cell(value: Any) -> str:
    """A value as one table cell: control characters (a newline, an escape sequence) and
    bidirectional overrides shown escaped, so that a cell never breaks the table or the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as an aligned text table (cells escaped by `cell`)."""
    cells = [{c: cell(r.get(c, "")) for c in columns} for r in rows]
    widths = {c: max([len(c)] + [len(r[c]) for r in cells]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in cells:
        click.echo("  ".join(r[c].ljust(widths[c]) for c in columns).rstrip())


def show_resolved(run_dir) -> None:
    """Print the short block of a run folder's resolved.json (where each setting came from)."""
    from pathlib import Path

    from llmctl.jobs.provenance import block

    path = Path(run_dir) / "resolved.json"
    if path.is_file():
        click.echo(block(json.loads(path.read_text(encoding="utf-8")), str(path)), err=True)


def report(run, dry, dry_run, submit_run, as_json: bool = False) -> None:
    """Print the script (dry run) or submit it: the end of every job-making command. The
    resolved settings and their sources (resolved.json in the run folder) go to stderr first.
    With `as_json`, stdout is one object (llmctl/cli/examples.py's JSON_SHAPES "train launch")."""
    show_resolved(run.path)
    if as_json:
        job_id = None if dry_run else submit_run(run.path)[1]
        print_json({"run_dir": str(run.path), "backend": dry.spec.backend, "dry_run": bool(dry_run),
                    "job_id": job_id, "script": str(run.script(dry.spec.backend)),
                    "resolved": json.loads((run.path / "resolved.json").read_text(encoding="utf-8"))})
        return
    if dry_run:
        click.echo(dry.script, nl=False)
        for key, source in dry.spec.sources.items():
            value = {"partition": dry.spec.partition, "time": dry.spec.time_limit, "account": dry.spec.account,
                     "qos": dry.spec.qos, "reservation": dry.spec.reservation, "mail_user": dry.spec.mail_user,
                     "mail_type": ",".join(dry.spec.mail_types)}.get(key)
            if value:
                click.echo(f"# {key} = {shlex.quote(str(value))}  ({source})", err=True)
        from llmctl.config.overrides import shown

        for key, value in dry.spec.overrides.items():
            click.echo(f"# site.{key} = {shlex.quote(shown(value))}  (flag --set, over site {dry.spec.site!r})", err=True)
        click.echo(f"# dry run: nothing submitted. Run folder: {run.path}", err=True)
        click.echo(f"# review it, then: llmctl job submit {shlex.quote(str(run.path))}", err=True)
        return
    _, job_id = submit_run(run.path)
    click.echo(f"submitted {dry.spec.backend} job {job_id}: {run.path}")
