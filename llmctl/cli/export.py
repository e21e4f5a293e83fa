"""`llmctl export`: Hugging Face-compatible artifacts (issue #9)."""

from __future__ import annotations

import click

from llmctl.cli.common import not_implemented


@click.command("export")
@click.option("--checkpoint", type=click.Path(), help="Checkpoint to export.")
@click.option("--artifact", type=click.Path(file_okay=False), help="Import a Hugging Face Llama folder instead.")
@click.option("--out", type=click.Path(), help="Artifact folder to write.")
@click.option("--format", "fmt", type=click.Choice(["hf"]), default="hf", show_default=True)
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--quantize", type=click.Choice(["int8"]), help="Weight-only quantisation.")
def command(**kwargs) -> None:
    """Export a checkpoint as safetensors + config.json + tokenizer."""
    not_implemented("export", 9)
