"""Typed models for every file a user writes, and the one loader for them.

`KINDS` maps each kind name (as used by `llmctl schema KIND`) to its model class and
the file formats it comes in. Models are imported lazily: pydantic is not needed
for `llmctl --help`.
"""

from __future__ import annotations

import importlib
from typing import Any

# kind -> (module, class, formats, one-line description)
KINDS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "model": ("llmctl.config.model", "ModelConfig", ("json",), "model architecture (configs/models/*.json)"),
    "hardware": ("llmctl.config.hardware", "HardwareProfile", ("toml", "json"), "hardware profile (configs/hw/*.toml)"),
    "site": ("llmctl.config.site", "SiteConfig", ("toml",), "site-config for a cluster (site-configs/*.toml)"),
    "train": ("llmctl.config.train", "TrainConfig", ("toml",), "training config (configs/train.toml)"),
    "data": ("llmctl.config.data", "DataConfig", ("toml",), "data config (configs/data/*.toml)"),
    "eval-suite": ("llmctl.config.eval", "EvalSuite", ("toml",), "eval suite (configs/eval/*.toml)"),
    "eval-task": ("llmctl.config.eval", "EvalTask", ("toml",), "eval task (configs/eval/tasks/*.toml)"),
    "serve": ("llmctl.config.serve", "ServeConfig", ("toml",), "serve config (configs/serve.toml)"),
    "plan": ("llmctl.config.plan", "PlanFile", ("toml", "json"), "parallelism plan (plans/*.toml)"),
}


def model_class(kind: str) -> Any:
    """The pydantic model class for `kind` (a key of KINDS)."""
    from llmctl.errors import LlmctlError

    if kind not in KINDS:
        raise LlmctlError(f"unknown config kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    module, cls, _, _ = KINDS[kind]
    return getattr(importlib.import_module(module), cls)


def load(kind: str, path: Any) -> Any:
    """Load and validate the file at `path` as `kind`."""
    from llmctl.config.base import load_config

    return load_config(path, model_class(kind))


def json_schema(kind: str) -> dict[str, Any]:
    """JSON Schema of `kind`."""
    schema = model_class(kind).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
