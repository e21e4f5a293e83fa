"""Eval suite and task files, in the spirit of lm-evaluation-harness."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from llmctl.config.base import Name, StrictModel
from llmctl.config.tracking import Tracking


# Metrics each output type computes; the first ones are the default.
METRICS = {
    "perplexity": ("perplexity", "loss", "bits_per_byte"),
    "multiple_choice": ("acc", "acc_norm"),
    "generate_until": ("exact_match",),
}


class EvalTask(StrictModel):
    """One task: a dataset of documents and how to turn each into a prompt and a target."""

    task: Name = Field(min_length=1)
    """Task name."""
    output_type: Literal["perplexity", "multiple_choice", "generate_until"]
    """What the model is asked to do."""
    dataset_path: Optional[str] = None
    """Local JSONL file of documents (relative to the task file)."""
    data_config: Optional[str] = None
    """perplexity only: evaluate on this data config's validation shards ("run": the
    checkpoint's own training data config)."""
    description: str = ""
    """Text put before the few-shot examples of every prompt."""
    doc_to_text: str = "{{text}}"
    """Jinja template for the prompt."""
    doc_to_target: Optional[str] = None
    """Jinja template (or field) for the target."""
    doc_to_choice: Union[str, list[str], None] = None
    """multiple_choice: a list of choices, or a field / Jinja expression giving one."""
    target_delimiter: str = " "
    """Between the prompt and the target (or each choice)."""
    fewshot_delimiter: str = "\n\n"
    """Between few-shot examples."""
    until: list[str] = ["\n"]
    """generate_until: stop sequences."""
    max_gen_toks: int = Field(64, gt=0)
    """generate_until: most tokens to generate."""
    num_fewshot: int = Field(0, ge=0)
    """Examples shown before each question."""
    metrics: list[str] = []
    """Metrics (default by output type: perplexity, acc/acc_norm, exact_match)."""
    version: str = "1.0"
    """Task version, reported in results."""

    @model_validator(mode="after")
    def _check(self) -> "EvalTask":
        if not self.dataset_path and not self.data_config:
            raise ValueError("a task needs `dataset_path` or (perplexity) `data_config`")
        if self.output_type == "multiple_choice" and not self.doc_to_choice:
            raise ValueError("multiple_choice tasks need `doc_to_choice`")
        if self.output_type != "perplexity" and not self.dataset_path:
            raise ValueError(f"{self.output_type} tasks need `dataset_path` (a JSONL file)")
        known = METRICS[self.output_type]
        bad = [m for m in self.metrics if m not in known]
        if bad:
            raise ValueError(f"metrics: {', '.join(map(repr, bad))} not available for "
                             f"{self.output_type} tasks; choose from {', '.join(known)}")
        return self


class TaskRef(StrictModel):
    """A task in a suite: a task file, or a built-in task by name."""

    name: Name
    """Task name (a built-in, or the name given in `path`)."""
    path: Optional[str] = None
    """Task file (TOML/YAML), relative to the suite file."""
    num_fewshot: Optional[int] = Field(None, ge=0)
    """Override the task's n-shot."""
    limit: Optional[int] = Field(None, gt=0)
    """Evaluate at most N documents."""


class EvalSuite(StrictModel):
    """An eval suite (TOML): a list of tasks and defaults."""

    name: Name
    """Suite name."""
    description: str = ""
    """What the suite measures."""
    tasks: list[TaskRef] = Field(min_length=1)
    """Tasks to run."""
    batch_size: int = Field(8, gt=0)
    """Default batch size."""
    seed: int = Field(1234, ge=0)
    """Seed for few-shot sampling and bootstrap."""
    bootstrap_iters: int = Field(1000, ge=0)
    """Bootstrap resamples for standard errors."""
    tracking: Optional[Tracking] = None
    """Experiment tracking: each task's metrics (and standard errors) also go to these trackers."""
