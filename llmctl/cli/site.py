"""`llmctl site`: list, show and check site-configs."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, print_json, print_table


@click.group("site")
def group() -> None:
    """Site-configs: how llmctl asks each cluster for resources."""


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List site-configs in look-up order (earlier ones shadow later ones)."""
    from llmctl.sites import list_sites

    entries = list_sites()
    if as_json:
        print_json(entries)
        return
    print_table(entries, ["name", "scheduler", "origin", "path", "description"])


@group.command("show")
@click.argument("site")
@json_option
def show(site: str, as_json: bool) -> None:
    """Show a site-config (SITE: its name or path) with every default filled in."""
    from llmctl.sites import load_site

    cfg, path = load_site(site)
    if as_json:
        print_json({"path": str(path), "site": cfg.to_data()})
        return
    import tomli_w

    click.echo(f"# {path}")
    click.echo(tomli_w.dumps(cfg.to_data()).rstrip())


@group.command("check")
@click.argument("site")
@json_option
def check(site: str, as_json: bool) -> None:
    """Validate a site-config (SITE: its name or path); exit 2 on problems."""
    from llmctl.sites import check_site

    report = check_site(site)
    if as_json:
        print_json(report)
    else:
        for w in report["warnings"]:
            click.echo(f"warning: {w}", err=True)
        click.echo(f"ok: {report['name']} ({report['path']}): {report['summary']}")


@group.command("init")
@click.option("--scheduler", type=click.Choice(["slurm", "pbs"]),
              help="Scheduler to ask (default: slurm when `scontrol` is on PATH, else pbs when "
                   "`qstat` and `pbsnodes` are).")
@click.option("--name", help="Site name (default: the --output file's name, else the cluster's).")
@click.option("--python", "python", metavar="PATH",
              help="Python on the compute nodes, with llmctl importable (default: this llmctl's when "
                   "the default partition's nodes are this machine, else a commented placeholder).")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the draft to FILE (atomically) instead of printing it.")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@click.option("--from", "from_dir", type=click.Path(file_okay=False, exists=True),
              help="Read recorded command outputs from DIR instead of asking the scheduler "
                   "(scontrol_show_{config,partition,node}.txt or qstat_Bf.txt, qstat_Qf.txt, "
                   "pbsnodes_a.txt; see docs/site-admin.md).")
@json_option
def init(scheduler, name, python, output, force, from_dir, as_json) -> None:
    """Draft a site-config from the cluster's scheduler: partitions, nodes, GPUs, limits.

    \b
    Reads `scontrol -a -o show partition|node` (SLURM) or `qstat -Q -f`, `qstat -B -f`
    and `pbsnodes -a` (PBS). What the scheduler cannot know (account, modules,
    container, network, filesystems; python unless the nodes are this machine) is
    left as commented placeholders. The draft passes `llmctl site check`; run
    `llmctl doctor --site FILE` next.
    """
    from pathlib import Path

    from llmctl.errors import LlmctlError
    from llmctl.siteinit import detect_scheduler, draft, inventory, site_name, write

    if output and not force and Path(output).exists():
        raise LlmctlError(f"{output} already exists", hint="pass --force to replace it")
    if output and name and Path(output).stem != name:
        raise LlmctlError(f"--name {name!r} differs from the file name {Path(output).stem!r}",
                          hint="`--site NAME` finds NAME.toml: name the file after the site")
    cluster = inventory(scheduler or detect_scheduler(), from_dir=from_dir)
    name = name or (Path(output).stem if output else None)
    text = draft(cluster, name=name, python=python)
    path = write(text, output, force=force) if output else None
    if as_json:
        print_json({"scheduler": cluster.scheduler, "cluster": cluster.name, "name": name or site_name(cluster.name),
                    "partitions": list(cluster.partitions), "written": path and str(path), "text": text})
    elif not output:
        click.echo(text, nl=False)
    if not output:
        return
    click.echo(f"wrote {path}: {len(cluster.partitions)} partition(s) from {cluster.scheduler} cluster "
               f"{cluster.name!r}; next: llmctl site check {path} && llmctl doctor --site {path}", err=True)
