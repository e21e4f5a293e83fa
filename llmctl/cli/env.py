"""`llmctl env` (versions, paths, hardware for bug reports) and `llmctl completion`."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, print_json


@click.command("env")
@json_option
def command(as_json: bool) -> None:
    """Print versions, paths and the detected hardware (paste into bug reports)."""
    from llmctl.envinfo import collect, render_text

    info = collect()
    if as_json:
        print_json(info)
    else:
        click.echo(render_text(info))


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish): eval "$(llmctl completion bash)"."""
    from click.shell_completion import get_completion_class

    # the root command from click's context, not `from llmctl.cli import cli`: that import
    # would make a circle (llmctl.cli registers this module)
    root = click.get_current_context().find_root().command
    comp_cls = get_completion_class(shell)
    comp = comp_cls(root, {}, "llmctl", "_LLMCTL_COMPLETE")
    click.echo(comp.source())
