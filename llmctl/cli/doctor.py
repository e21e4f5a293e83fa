"""`llmctl doctor`: the checks that need no job, one line each (llmctl.doctor)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, print_json


@click.command("doctor")
@click.option("--site", default=None, help="Site-config (name or path; default: local).")
@click.option("--no-job", is_flag=True,
              help="Start no one-task job (srun) to check the python on a compute node.")
@json_option
@click.pass_context
def command(ctx: click.Context, site: str | None, no_job: bool, as_json: bool) -> None:
    """Check that jobs can run on a site: ok / warn / FAIL per check; exit 2 on any FAIL.

    \b
    The site-config (as `site check`), the scheduler's commands on PATH, its partitions
    and node shapes against the site's, `sbatch --test-only` per partition (SLURM), the
    job's python importing llmctl where jobs run (a one-task srun on SLURM), NCCL
    settings against the fabric and the interfaces, and the shared filesystems.
    """
    from llmctl.doctor import failed, render, run_checks

    checks = run_checks(site, run_job=not no_job)
    if as_json:
        print_json({"site": site or "local", "ok": not failed(checks),
                    "checks": [c.to_data() for c in checks]})
    else:
        click.echo(render(checks))
    if failed(checks):
        ctx.exit(2)
