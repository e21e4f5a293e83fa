"""`llmctl export`: Hugging Face-compatible artifacts (issue #9)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, print_json
from llmctl.errors import LlmctlError


@click.command("export")
@click.option("--checkpoint", type=click.Path(),
              help="Checkpoint to export (a step folder, checkpoints/ or a run; any layout's).")
@click.option("--artifact", type=click.Path(file_okay=False), help="Import a Hugging Face folder (llama, mistral, qwen2, gpt2) instead.")
@click.option("--out", type=click.Path(), help="Artifact folder to write.")
@click.option("--format", "fmt", type=click.Choice(["hf"]), default="hf", show_default=True,
              help="Artifact format: hf = a Hugging Face transformers folder (config.json, model.safetensors, "
                   "tokenizer files).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True,
              help="Floating-point type of the exported weights (the checkpoint's fp32 master weights are cast).")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="Weight-only int8 (per-channel scales), read by `llmctl serve`.")
@click.option("--skip-verify", is_flag=True,
              help="Export even a checkpoint whose files do not match the digests in its state.json.")
@json_option
def command(checkpoint, artifact, out, fmt, dtype, quantize, skip_verify, as_json) -> None:
    """Export a checkpoint as safetensors + config.json + tokenizer.

    With --artifact instead, read a Hugging Face folder (Llama, Mistral, Qwen2 or
    GPT-2) into llmctl's format: model.json + model.safetensors (+ tokenizer files).
    """
    if bool(checkpoint) == bool(artifact):
        raise LlmctlError("give exactly one of --checkpoint (export) or --artifact (import)")
    if not out:
        raise LlmctlError("--out: the folder to write is required")
    if quantize and artifact:
        raise LlmctlError("--quantize applies to --checkpoint exports only")
    from llmctl.export.hf import export_checkpoint, import_artifact

    if checkpoint:
        path = export_checkpoint(checkpoint, out, dtype, quantize, verify=not skip_verify)
        if as_json:
            print_json({"direction": "export", "source": checkpoint, "artifact": str(path), "format": fmt,
                        "dtype": dtype, "quantize": quantize})
            return
        click.echo(f"exported {checkpoint} -> {path} ({fmt}, {dtype}"
                   f"{', int8 weights (for llmctl serve; transformers cannot load them)' if quantize else ''})")
    else:
        path = import_artifact(artifact, out)
        if as_json:
            print_json({"direction": "import", "source": artifact, "artifact": str(path), "format": "llmctl",
                        "dtype": None, "quantize": None})
            return
        click.echo(f"imported {artifact} -> {path} (llmctl model.json + model.safetensors)")
