"""Eval tasks and suites: task files (TOML or YAML), the built-in tasks, and prompts.

A task file follows lm-evaluation-harness's YAML tasks: `doc_to_text`,
`doc_to_target` and `doc_to_choice` are Jinja templates (or plain field names)
applied to each document of a local JSONL file. A suite file lists tasks by
built-in name or by path. Built-in tasks live in llmctl/eval/builtin/ and ship in
the wheel; they need no download.
"""

from __future__ import annotations

import ast
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import ConfigError, LlmctlError

SUFFIXES = (".toml", ".yaml", ".yml")


def builtin_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("llmctl.eval") / "builtin"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.toml") if p.stem != "suite")


def builtin_suite() -> Path:
    """The suite of all built-in tasks (what `eval run` uses without --suite)."""
    return builtin_dir() / "suite.toml"


@dataclass
class Task:
    """A loaded task: its config, where it came from, and (lazily) its documents."""

    cfg: Any  # llmctl.config.eval.EvalTask
    path: Path
    limit: Optional[int] = None
    _docs: Optional[list[dict]] = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.cfg.task

    def docs(self) -> list[dict]:
        """Every document of the dataset (before --limit)."""
        if self._docs is None:
            self._docs = read_jsonl(self.dataset_file(), str(self.path))
        return self._docs

    def dataset_file(self) -> Path:
        p = Path(self.cfg.dataset_path).expanduser()
        return p if p.is_absolute() else self.path.parent / p


def read_jsonl(path: Path, where: str) -> list[dict]:
    """Documents of a JSONL file (llmctl.jsonl: a bad line is an error naming file:line)."""
    from llmctl.jsonl import read_objects

    if not path.exists():
        raise LlmctlError(f"{where}: dataset_path: {path} not found")
    docs = [doc for _, doc in read_objects(path, "a document")]
    if not docs:
        raise LlmctlError(f"{path}: no documents")
    return docs


def read_task_data(path: Path) -> dict[str, Any]:
    """Parse a TOML or YAML task file into a dict (errors name the file)."""
    from llmctl.config.base import read_data

    if path.suffix == ".toml":
        return read_data(path)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(str(path), [f"a task file must be TOML or YAML ({', '.join(SUFFIXES)})"])
    try:
        import yaml
    except ImportError:
        raise LlmctlError(f"{path}: YAML task files need PyYAML", hint="pip install pyyaml") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"malformed YAML: {' '.join(str(e).split())}"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), [f"cannot read: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["top level must be a mapping"])
    return data


def load_task(path: Path) -> Task:
    from llmctl.config.base import validate_data
    from llmctl.config.eval import EvalTask

    if not path.is_file():
        raise ConfigError(str(path), ["task file not found"])
    return Task(validate_data(read_task_data(path), EvalTask, str(path)), path)


def load_suite(suite_path: Optional[str], only: Optional[str] = None) -> tuple[Any, list[Task]]:
    """The suite (built-in one when `suite_path` is None) and its tasks, `only` a comma list.

    A name in `only` that the suite lacks may still be a built-in task; anything else
    is an error that lists what is available.
    """
    from llmctl.config.base import load_config
    from llmctl.config.eval import EvalSuite

    path = Path(suite_path) if suite_path else builtin_suite()
    if not path.is_file():
        raise ConfigError(str(path), ["suite file not found"])
    suite = load_config(path, EvalSuite)
    refs = {}
    for i, ref in enumerate(suite.tasks):
        refs[ref.name] = (ref, i)
    wanted = [t.strip() for t in only.split(",") if t.strip()] if only else list(refs)
    tasks = []
    for name in wanted:
        if name in refs:
            ref, i = refs[name]
            task = _resolve_ref(ref, path, f"tasks[{i}]")
        elif name in builtin_names():
            task = load_task(builtin_dir() / f"{name}.toml")
            ref = None
        else:
            raise LlmctlError(f"unknown task {name!r}: not in suite {path} and not built in",
                              hint=f"suite tasks: {', '.join(refs) or '-'}; built-in: {', '.join(builtin_names())}")
        if ref is not None:
            if ref.num_fewshot is not None:
                task.cfg = task.cfg.model_copy(update={"num_fewshot": ref.num_fewshot})
            task.limit = ref.limit
        tasks.append(task)
    return suite, tasks


def _resolve_ref(ref, suite_path: Path, key: str) -> Task:
    if ref.path:
        p = Path(ref.path).expanduser()
        task = load_task(p if p.is_absolute() else suite_path.parent / p)
        if task.name != ref.name:
            raise ConfigError(str(suite_path), [f"{key}.name: {ref.name!r} but {task.path} defines "
                                                f"task {task.name!r}"])
        return task
    if ref.name not in builtin_names():
        raise ConfigError(str(suite_path), [f"{key}.name: unknown task {ref.name!r} (no `path`, and not "
                                            f"built in: {', '.join(builtin_names())})"])
    return load_task(builtin_dir() / f"{ref.name}.toml")


# --- prompts ---------------------------------------------------------------------

@lru_cache(maxsize=1)
def _jinja():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Sandboxed: task files come from anyone; a template may read a document, nothing more.
    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@lru_cache(maxsize=256)
def _template(source: str):
    return _jinja().from_string(source)


def apply(spec: Any, doc: dict, task: Task, key: str) -> Any:
    """A field name, a Jinja template, or (choices) a literal list, applied to `doc`."""
    import jinja2

    if isinstance(spec, list):
        return spec
    if spec in doc:
        return doc[spec]
    try:
        out = _template(spec).render(**doc)
    except jinja2.TemplateError as e:
        raise LlmctlError(f"{task.path}: {key}: {e} (document {json.dumps(doc)[:80]})") from None
    return out


def target_of(task: Task, doc: dict) -> Any:
    spec = task.cfg.doc_to_target
    if spec is None:
        raise LlmctlError(f"{task.path}: doc_to_target: required for {task.cfg.output_type} tasks")
    return apply(spec, doc, task, "doc_to_target")


def choices_of(task: Task, doc: dict) -> list[str]:
    out = apply(task.cfg.doc_to_choice, doc, task, "doc_to_choice")
    if isinstance(out, str):
        try:
            out = ast.literal_eval(out)
        except (ValueError, SyntaxError):
            raise LlmctlError(f"{task.path}: doc_to_choice: {out[:60]!r} is not a list") from None
    if not isinstance(out, list) or not out or not all(isinstance(c, str) for c in out):
        raise LlmctlError(f"{task.path}: doc_to_choice: must give a non-empty list of strings")
    return out


def gold_index(task: Task, doc: dict, choices: list[str]) -> int:
    """The correct choice: an index, or the text of one choice."""
    t = target_of(task, doc)
    if isinstance(t, str) and t.strip().lstrip("-").isdigit() and t.strip() not in choices:
        t = int(t)
    if isinstance(t, int) and 0 <= t < len(choices):
        return t
    if isinstance(t, str) and t in choices:
        return choices.index(t)
    raise LlmctlError(f"{task.path}: doc_to_target: {t!r} is neither a choice nor an index into "
                      f"{choices}")


def target_text(task: Task, doc: dict) -> str:
    """The answer as text (for few-shot examples and exact match)."""
    if task.cfg.output_type == "multiple_choice":
        choices = choices_of(task, doc)
        return choices[gold_index(task, doc, choices)]
    return str(target_of(task, doc))


def fewshot_context(task: Task, doc_index: int, seed: int) -> str:
    """description + n examples + this document's prompt; examples drawn with a fixed seed."""
    cfg = task.cfg
    docs = task.docs()
    parts = []
    if cfg.num_fewshot:
        rng = random.Random(f"{seed}:{task.name}:{doc_index}")
        pool = [i for i in range(len(docs)) if i != doc_index]
        for i in rng.sample(pool, min(cfg.num_fewshot, len(pool))):
            parts.append(apply(cfg.doc_to_text, docs[i], task, "doc_to_text") + cfg.target_delimiter
                         + target_text(task, docs[i]))
    parts.append(str(apply(cfg.doc_to_text, docs[doc_index], task, "doc_to_text")))
    return cfg.description + cfg.fewshot_delimiter.join(parts)
