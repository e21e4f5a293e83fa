"""`llmctl hw`: probe the hardware and benchmark it (issue #3)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, not_implemented


@click.group("hw")
def group() -> None:
    """Hardware probing and micro-benchmarks."""


@group.command("probe")
@click.option("--emit", type=click.Path(dir_okay=False), help="Write the hardware profile to this file.")
@click.option("--format", "fmt", type=click.Choice(["toml", "json"]), default=None,
              help="Profile format (default: from --emit's suffix, else toml).")
@click.option("--verbose", is_flag=True, help="Keep the raw tool outputs next to the profile.")
@click.option("--site", default=None, help="Site-config whose node shape describes the cluster.")
@click.option("--nodes", type=click.IntRange(min=1), default=None, help="Nodes in the cluster profile.")
@click.option("--all-nodes", is_flag=True, help="Inside an allocation: probe every node and merge.")
@json_option
def probe(emit, fmt, verbose, site, nodes, all_nodes, as_json) -> None:
    """Read GPUs, links, CPU and memory into a hardware profile."""
    not_implemented("hw probe", 3)


@group.command("benchmark")
@click.option("--component", type=click.Choice(["compute", "memory", "comm", "disk", "all"]),
              default="all", show_default=True, help="What to measure.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds to spend per component.")
@click.option("--emit", type=click.Path(dir_okay=False), help="Add results to this profile's [measured].")
@json_option
def benchmark(component, duration, emit, as_json) -> None:
    """Measure matmul rate, memory, collective and disk bandwidth."""
    not_implemented("hw benchmark", 3)
