"""Config key typos: the error suggests the near valid key (as CLI typos do), in every kind."""

from __future__ import annotations

import pytest

from llmctl.config import load
from llmctl.errors import ConfigError
from llmctl.resources import data_dir


def _problem(kind, path):
    with pytest.raises(ConfigError) as e:
        load(kind, path)
    (problem,) = e.value.problems
    return problem


def test_train_config_typo_suggests_the_key(tmp_path):
    p = tmp_path / "train.toml"
    p.write_text('[model]\nname = "m"\n[schedule]\nmax_step = 10\n')
    problem = _problem("train", p)
    assert problem.startswith("schedule.max_step: unknown key 'max_step' in [schedule] (did you mean 'training.max_steps'?)")
    assert "valid keys:" in problem


def test_site_config_typo_suggests_the_key(tmp_path):
    text = (data_dir("site-configs") / "local.toml").read_text()
    p = tmp_path / "local.toml"
    p.write_text(text.replace("nodes = 1", "nodes = 1\ngpus_per_nod = 2", 1))
    assert "(did you mean 'gpus_per_node'?)" in _problem("site", p)


def test_serve_config_typo_suggests_the_key(tmp_path):
    p = tmp_path / "serve.toml"
    p.write_text("max_batch_token = 100\n")
    assert _problem("serve", p).startswith("max_batch_token: unknown key 'max_batch_token' "
                                           "(did you mean 'max_batch_tokens'?)")


def test_eval_suite_typo_inside_a_list_suggests_the_key(tmp_path):
    p = tmp_path / "suite.toml"
    p.write_text('name = "s"\n[[tasks]]\nname = "t"\nnum_fewshots = 2\n')
    assert "tasks[0].num_fewshots: unknown key 'num_fewshots' in [tasks[0]] (did you mean 'num_fewshot'?)" \
        in _problem("eval-suite", p)


def test_a_key_near_nothing_gets_no_guess(tmp_path):
    p = tmp_path / "serve.toml"
    p.write_text("zzzzqqq = 1\n")
    problem = _problem("serve", p)
    assert "did you mean" not in problem and "valid keys: artifact" in problem


def test_a_typo_in_its_own_table_is_suggested_there(tmp_path):
    p = tmp_path / "train.toml"
    p.write_text('[model]\nname = "m"\n[training]\nmax_step = 10\n')
    assert "unknown key 'max_step' in [training] (did you mean 'max_steps'?)" in _problem("train", p)
