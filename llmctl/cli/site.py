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
    """Show a site-config (NAME or PATH) with every default filled in."""
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
    """Validate a site-config (NAME or PATH); exit 2 on problems."""
    from llmctl.sites import check_site

    report = check_site(site)
    if as_json:
        print_json(report)
    else:
        for w in report["warnings"]:
            click.echo(f"warning: {w}", err=True)
        click.echo(f"ok: {report['name']} ({report['path']}): {report['summary']}")
