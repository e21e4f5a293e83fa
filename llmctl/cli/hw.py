"""`llmctl hw`: probe the hardware and benchmark it (issue #3)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, print_json


@click.group("hw")
def group() -> None:
    """Hardware probing and micro-benchmarks."""


@group.command("probe")
@click.option("--emit", type=click.Path(dir_okay=False), help="Write the hardware profile to this file.")
@click.option("--format", "fmt", type=click.Choice(["toml", "json"]), default=None,
              help="Profile format (default: from --emit's suffix, else toml).")
@click.option("--verbose", is_flag=True, help="Keep the raw tool outputs next to the profile (<name>.raw/).")
@click.option("--site", default=None, help="Site-config whose node shape describes the cluster.")
@click.option("--partition", default=None, help="Partition of --site (default: the site's default partition).")
@click.option("--nodes", type=click.IntRange(min=1), default=None, help="Nodes in the cluster profile.")
@click.option("--all-nodes", is_flag=True, help="Inside an allocation: probe every node and merge.")
@json_option
def probe(emit, fmt, verbose, site, partition, nodes, all_nodes, as_json) -> None:
    """Read GPUs, links, CPU and memory into a hardware profile.

    \b
    Without --emit the profile is printed. With --site the profile describes the
    site's node shape (NODES of them), not this machine: run it on a login node.
    """
    from llmctl.errors import LlmctlError
    from llmctl.hw import profile as hwp

    fmt = hwp.format_for(emit, fmt)
    if emit:
        hwp.check_writable(emit)
    if partition and not site:
        raise LlmctlError("--partition needs --site")
    if all_nodes:
        from llmctl.hw.allnodes import probe_all

        data, _ = probe_all()
        raw = None
    else:
        data, raw = hwp.probe_node()
    if site:
        from llmctl.sites import load_site

        cfg, path = load_site(site)
        data = hwp.from_site(cfg, path, partition, nodes, data)
    elif nodes:
        data = hwp.with_nodes(data, nodes)
    if emit:
        prof = hwp.write_profile(data, emit, fmt, raw if verbose else None)
        if as_json:
            print_json({"written": emit, "profile": prof.to_data()})
        else:
            click.echo(f"wrote {emit}" + (f" (raw outputs in {hwp.raw_dir_for(emit)})" if verbose and raw else ""))
            click.echo(hwp.summary(prof))
        return
    prof = hwp.validate(data)
    click.echo(hwp.render(prof, "json" if as_json else fmt), nl=False)


@group.command("benchmark")
@click.option("--component", type=click.Choice(["compute", "memory", "comm", "disk", "all"]),
              default="all", show_default=True, help="What to measure.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds to spend per component.")
@click.option("--emit", type=click.Path(dir_okay=False),
              help="Add results to this profile's [measured] (probes this node first if the file is new).")
@click.option("--dir", "folder", type=click.Path(file_okay=False), default=None,
              help="Folder for the disk benchmark (default: ./checkpoints if it exists, else .).")
@click.option("--procs", type=click.IntRange(min=2), default=None,
              help="Processes for the comm benchmark (default: one per GPU, or 2 gloo processes).")
@json_option
def benchmark(component, duration, emit, folder, procs, as_json) -> None:
    """Measure matmul rate, memory, collective and disk bandwidth."""
    import os
    import sys

    from llmctl.hw import profile as hwp
    from llmctl.hw.bench import run

    existing = None
    if emit:
        hwp.check_writable(emit)
        if os.path.exists(emit):
            from llmctl.config.base import load_config
            from llmctl.config.hardware import HardwareProfile

            existing = load_config(emit, HardwareProfile)  # a broken file fails now, not after the run
    if folder is None:
        folder = "checkpoints" if os.path.isdir("checkpoints") else "."

    def progress(msg: str) -> None:
        click.echo(msg, err=True)
        sys.stderr.flush()

    result = run(component, duration, progress, folder=folder, procs=procs)
    if emit:
        data = existing.to_data() if existing else hwp.probe_node()[0]
        data["measured"] = {**data.get("measured", {}), **result["measured"]}
        hwp.write_profile(data, emit, hwp.format_for(emit, None))
    if as_json:
        print_json({**result, **({"written": emit} if emit else {})})
        return
    for key, value in result["measured"].items():
        click.echo(f"{key} = {value}")
    if emit:
        click.echo(f"added to [measured] in {emit}")
