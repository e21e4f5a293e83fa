"""`llmctl init`: create a project folder."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, print_json

from llmctl.presets import MODELS

TEMPLATES = tuple(dict.fromkeys(t for t, _ in MODELS))


def _billions(size: str) -> float:
    return 0.0 if size == "tiny" else float(size[:-1]) / (1000 if size.endswith("m") else 1)


SIZES = tuple(sorted({s for _, s in MODELS}, key=_billions))


@click.group("init")
def group() -> None:
    """Create new projects."""


@group.command("scaffold")
@click.option("--template", type=click.Choice(TEMPLATES), required=True,
              help="Model family: gpt (GPT-3), llama (Llama 2), llama3 (Llama 3/3.1/3.2), mistral, qwen2.5.")
@click.option("--size", type=click.Choice(SIZES), required=True,
              help="Model size: published shapes (gpt/llama 7b-70b; llama3 1b, 3b, 8b, 70b, 405b; mistral 7b; "
                   "qwen2.5 0.5b-72b); tiny/125m/1b train on a CPU. Not every family has every size.")
@click.option("--name", required=True, help="Project name (a plain folder name).")
@click.option("--output-dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder in which the project folder is created.")
@click.option("--site", default=None, help="Site-config (name or path) to copy into the project.")
@click.option("--force", is_flag=True, help="Write into a non-empty project folder, replacing llmctl's files.")
@json_option
def scaffold(template: str, size: str, name: str, output_dir: str, site: str | None,
             force: bool, as_json: bool) -> None:
    """Create a project: model, hardware, training, data and eval configs.

    \b
    Example:
      llmctl init scaffold --template llama --size 7b --name llama-experiment
    """
    from llmctl.scaffold import scaffold_project

    result = scaffold_project(template=template, size=size, name=name, output_dir=output_dir,
                              site=site, force=force)
    if as_json:
        print_json(result)
        return
    click.echo(f"created {result['project_dir']} ({result['model']['name']}: "
               f"{result['model']['parameters_human']} parameters)")
    for f in result["files"]:
        click.echo(f"  {f}")
    click.echo("next:")
    click.echo(f"  cd {result['project_dir']}")
    for step in result["next_steps"]:
        click.echo(f"  {step}")
