"""Eval suite and task files, in the spirit of lm-evaluation-harness."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from llmctl.config.base import StrictModel


class EvalTask(StrictModel):
    """One task: a dataset of documents and how to turn each into a prompt and a target."""

    task: str = Field(min_length=1)
    """Task name."""
    output_type: Literal["perplexity", "multiple_choice", "generate_until"]
    """What the model is asked to do."""
    dataset_path: Optional[str] = None
    """Local JSONL file of documents (relative to the task file)."""
    data_config: Optional[str] = None
    """perplexity only: evaluate on this data config's validation shards."""
    doc_to_text: str = "{{text}}"
    """Jinja template for the prompt."""
    doc_to_target: Optional[str] = None
    """Jinja template (or field) for the target."""
    doc_to_choice: Optional[str] = None
    """multiple_choice: field or Jinja expression giving the list of choices."""
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
        return self


class TaskRef(StrictModel):
    """A task in a suite: a task file, or a built-in task by name."""

    name: str
    """Task name (a built-in, or the name given in `path`)."""
    path: Optional[str] = None
    """Task file (TOML/YAML), relative to the suite file."""
    num_fewshot: Optional[int] = Field(None, ge=0)
    """Override the task's n-shot."""
    limit: Optional[int] = Field(None, gt=0)
    """Evaluate at most N documents."""


class EvalSuite(StrictModel):
    """An eval suite (TOML): a list of tasks and defaults."""

    name: str
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
