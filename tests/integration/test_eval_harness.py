"""lm-evaluation-harness tasks on an llmctl checkpoint through our `llmctl` model
(`eval run --harness-tasks`): harness task YAMLs over local JSONL (no network).
The harness's own metric code must agree with llmctl's evaluator on the same
documents: multiple-choice acc/acc_norm and rolling bits per byte."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, run_cli

pytest.importorskip("torch")
pytest.importorskip("h5py")
pytest.importorskip("lm_eval")
sys.path.insert(0, str(REPO / "tests" / "unit"))

from trainkit import make_project, make_run, prepare_data, quiet_env  # noqa: E402

BUILTIN = REPO / "llmctl" / "eval" / "builtin"
# Documents for the rolling-loglikelihood task: a few lines of Python each.
TEXTS = ["import os\nprint(os.getcwd())\n", "def square(x):\n    return x * x\n",
         "for i in range(10):\n    total += i\n", "class Point:\n    def __init__(self, x, y):\n        self.x = x\n"]

HARNESS_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {kind}
{body}"""

MC = """\
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""
ROLLING = """\
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
GEN = """\
doc_to_text: "{{a}} + {{b}} =="
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """An (untrained) checkpoint saved by the trainer's Checkpointer, and harness tasks."""
    root = make_project(tmp_path_factory.mktemp("harness") / "p", docs=40)
    prepare_data(root)
    import torch

    from llmctl.model.transformer import Transformer
    from llmctl.train.checkpoint import Checkpointer
    from llmctl.train.setup import load_run

    run = make_run(root, "r", steps=1)
    s = load_run(run)
    torch.manual_seed(3)
    model = Transformer(s.model_cfg)
    Checkpointer(run / "checkpoints").save(0, model, torch.optim.AdamW(model.parameters()), s.hashes())

    tasks = root / "harness_tasks"
    tasks.mkdir()
    (root / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (tasks / "mc.yaml").write_text(HARNESS_YAML.format(name="llmctl_code_mc", data=BUILTIN / "code_completion.jsonl",
                                                       kind="multiple_choice", body=MC.format()))
    (tasks / "rolling.yaml").write_text(HARNESS_YAML.format(name="llmctl_rolling", data=root / "texts.jsonl",
                                                            kind="loglikelihood_rolling", body=ROLLING))
    (tasks / "gen.yaml").write_text(HARNESS_YAML.format(name="llmctl_arith", data=BUILTIN / "arithmetic.jsonl",
                                                        kind="generate_until", body=GEN))
    # The same perplexity task in llmctl's own format, for the comparison.
    (root / "texts.toml").write_text('task = "texts"\noutput_type = "perplexity"\ndataset_path = "texts.jsonl"\n'
                                     'doc_to_text = "{{text}}"\n')
    (root / "suite.toml").write_text('name = "cmp"\n[[tasks]]\nname = "code_completion"\n'
                                     '[[tasks]]\nname = "texts"\npath = "texts.toml"\n')
    return root, run / "checkpoints" / "step-00000000", tasks


def env(root):
    # Everything local: no hub look-ups, the datasets cache inside the test folder.
    return quiet_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf"))


def test_harness_tasks_agree_with_llmctl_evaluator(project, tmp_path):
    root, ckpt, tasks = project
    out = tmp_path / "harness.json"
    r = run_cli("eval", "run", "--checkpoint", str(ckpt), "--harness-tasks",
                "llmctl_code_mc,llmctl_rolling,llmctl_arith", "--harness-include", str(tasks), "--limit", "20",
                "--output", str(out), cwd=root, env=env(root), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "llmctl_code_mc" in r.stdout  # lm_eval's table
    h = json.loads(out.read_text())
    assert h["config"]["model"] == "llmctl" and h["config"]["checkpoint"] == str(ckpt)
    assert h["n-samples"]["llmctl_code_mc"]["effective"] == 20
    assert h["n-samples"]["llmctl_rolling"]["effective"] == len(TEXTS)
    assert 0.0 <= h["results"]["llmctl_arith"]["exact_match,none"] <= 1.0

    ours_out = tmp_path / "ours.json"
    r = run_cli("eval", "run", "--checkpoint", str(ckpt), "--suite", str(root / "suite.toml"), "--limit", "20",
                "--output", str(ours_out), cwd=root, env=env(root), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    ours = json.loads(ours_out.read_text())["results"]
    mc = h["results"]["llmctl_code_mc"]
    assert mc["acc,none"] == ours["code_completion"]["acc,none"]
    assert mc["acc_norm,none"] == ours["code_completion"]["acc_norm,none"]
    assert h["results"]["llmctl_rolling"]["bits_per_byte,none"] == \
        pytest.approx(ours["texts"]["bits_per_byte,none"], rel=1e-6)


def test_unknown_harness_task_exits_2(project):
    root, ckpt, tasks = project
    r = run_cli("eval", "run", "--checkpoint", str(ckpt), "--harness-tasks", "llmctl_no_such_task",
                "--harness-include", str(tasks), cwd=root, env=env(root), timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "llmctl_no_such_task" in r.stderr
