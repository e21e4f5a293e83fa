"""Eval task and suite files: built-ins, TOML and YAML tasks, prompts, and bad input (exit 2)."""

from __future__ import annotations

import json

import pytest

from llmctl.errors import LlmctlError
from llmctl.eval import tasks as T

YAML_TASK = """task: capitals
output_type: multiple_choice
dataset_path: capitals.jsonl
description: "Capitals.\\n\\n"
doc_to_text: "Q: capital of {{country}}?\\nA:"
doc_to_choice: "{{options}}"
doc_to_target: "{{answer}}"
num_fewshot: 2
metrics: [acc]
"""
DOCS = [{"country": c, "options": ["Paris", "Rome", "Oslo", "Bern"], "answer": a}
        for c, a in [("France", "Paris"), ("Italy", "Rome"), ("Norway", "Oslo"), ("Switzerland", "Bern"),
                     ("Gaul", "Paris")]]


@pytest.fixture
def yaml_suite(tmp_path):
    (tmp_path / "capitals.yaml").write_text(YAML_TASK)
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    suite = tmp_path / "suite.toml"
    suite.write_text('name = "s"\n[[tasks]]\nname = "capitals"\npath = "capitals.yaml"\nlimit = 3\n'
                     '[[tasks]]\nname = "arithmetic"\nnum_fewshot = 1\n')
    return suite


def test_builtin_suite_names_the_scaffolded_tasks():
    from llmctl.resources import data_dir

    suite, tasks = T.load_suite(None)
    names = [t.name for t in tasks]
    scaffold = (data_dir("templates") / "scaffold" / "eval-suite.toml.j2").read_text()
    # Every task the scaffolded suite names is built in, so `llmctl init`'s suite runs as it is.
    for line in scaffold.splitlines():
        if line.startswith("name = ") and "lm-eval" not in line:
            assert line.split('"')[1] in names
    kinds = {t.name: t.cfg.output_type for t in tasks}
    assert set(kinds.values()) == {"perplexity", "multiple_choice", "generate_until"}
    for t in tasks:
        if t.cfg.dataset_path:
            docs = t.docs()
            assert len(docs) >= 30
            if t.cfg.output_type == "multiple_choice":
                for d in docs:
                    choices = T.choices_of(t, d)
                    assert len(set(choices)) == len(choices) == 4
                    assert 0 <= T.gold_index(t, d, choices) < 4


def test_yaml_task_in_a_suite_with_overrides(yaml_suite):
    suite, tasks = T.load_suite(str(yaml_suite))
    cap, arith = tasks
    assert cap.limit == 3 and cap.cfg.num_fewshot == 2 and arith.cfg.num_fewshot == 1
    doc = cap.docs()[1]
    choices = T.choices_of(cap, doc)
    assert choices[T.gold_index(cap, doc, choices)] == "Rome"
    ctx = T.fewshot_context(cap, 1, seed=5)
    assert ctx.startswith("Capitals.\n\n") and ctx.endswith("Q: capital of Italy?\nA:")
    # Two worked examples, never the document itself, the same ones for the same seed.
    shots = ctx[len("Capitals.\n\n"):].split("\n\n")
    assert len(shots) == 3 and all("Italy" not in s for s in shots[:2])
    assert all(s.split("A: ")[1] in ("Paris", "Oslo", "Bern") for s in shots[:2])
    assert ctx == T.fewshot_context(cap, 1, seed=5)
    assert len({T.fewshot_context(cap, 1, seed=s) for s in range(12)}) > 1
    # --tasks picks a subset, and may name a built-in the suite lacks.
    _, only = T.load_suite(str(yaml_suite), "code_completion,capitals")
    assert [t.name for t in only] == ["code_completion", "capitals"]


def test_unknown_task_lists_what_exists(yaml_suite):
    with pytest.raises(LlmctlError) as e:
        T.load_suite(str(yaml_suite), "capitals,nope")
    assert "unknown task 'nope'" in e.value.message and "capitals" in e.value.hint


@pytest.mark.parametrize("name,text,problem", [
    ("bad.yaml", "task: [unclosed\n", "malformed YAML"),
    ("bad.toml", "task = \n", "malformed TOML"),
    ("bad.toml", 'task = "t"\noutput_type = "essay"\ndataset_path = "d.jsonl"\n', "output_type"),
    ("bad.toml", 'task = "t"\noutput_type = "multiple_choice"\ndataset_path = "d.jsonl"\n', "doc_to_choice"),
    ("bad.toml", 'task = "t"\noutput_type = "generate_until"\ndataset_path = "d.jsonl"\nmetrics = ["acc"]\n',
     "metrics"),
    ("bad.toml", 'task = "t"\noutput_type = "perplexity"\ndataset_path = "d.jsonl"\ncolour = 1\n', "colour"),
])
def test_malformed_task_file_exits_2(cli, tmp_path, name, text, problem):
    (tmp_path / name).write_text(text)
    (tmp_path / "suite.toml").write_text(f'name = "s"\n[[tasks]]\nname = "t"\npath = "{name}"\n')
    r = cli("eval", "run", "--checkpoint", str(tmp_path / "missing"), "--suite", str(tmp_path / "suite.toml"),
            cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(tmp_path / name) in r.stderr and problem in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # the message (and perhaps a hint)


def test_unknown_task_and_bad_dataset_exit_2(cli, tmp_path):
    r = cli("eval", "run", "--checkpoint", str(tmp_path), "--tasks", "arithmetic,nope", cwd=tmp_path)
    assert r.returncode == 2 and "unknown task 'nope'" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "t.toml").write_text('task = "t"\noutput_type = "multiple_choice"\ndataset_path = "d.jsonl"\n'
                                     'doc_to_choice = "c"\ndoc_to_target = "a"\n')
    (tmp_path / "d.jsonl").write_text('{"c": ["x"], "a": 0}\n{not json\n')
    with pytest.raises(LlmctlError) as e:
        T.load_task(tmp_path / "t.toml").docs()
    assert "d.jsonl:2: not valid JSON" in e.value.message
