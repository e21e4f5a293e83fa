"""Generated docs are current; hand-written docs name only commands that exist."""

from __future__ import annotations

import re
from pathlib import Path

from llmctl import docgen
from llmctl.cli import cli

REPO = Path(__file__).resolve().parents[2]


def test_generated_references_are_current():
    for name, fn in docgen.GENERATED.items():
        committed = (REPO / "docs" / name).read_text(encoding="utf-8")
        assert committed == fn(), f"docs/{name} is stale: run `make docs`"


def test_config_reference_covers_every_key():
    text = (REPO / "docs/config-reference.md").read_text()
    for key in ("`limits.estimated_flops`", "`partitions.NAME.gpus_per_node`", "`optimizer.betas`",
                "`gpu.devices[].memory_gb`", "`rope.scaling`", "`parallelism.layers_per_stage`"):
        assert key in text


def test_readme_and_docs_name_real_commands():
    pattern = re.compile(r"llmctl ([a-z]+)(?: ([a-z]+))?")
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for group, verb in pattern.findall(path.read_text()):
            if group not in cli.commands:
                continue  # prose such as "llmctl is"
            cmd = cli.commands[group]
            if verb and hasattr(cmd, "commands") and verb not in ("is",):
                assert verb in cmd.commands, f"{path.name}: `llmctl {group} {verb}` does not exist"
