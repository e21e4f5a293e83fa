"""`llmctl init scaffold`: the project it writes, and what it refuses."""

from __future__ import annotations

import json
import os

import pytest

from llmctl.config import load
from llmctl.config.base import read_data
from llmctl.errors import LlmctlError
from llmctl.plan.params import count_parameters
from llmctl.presets import MODELS, TEMPLATE
from llmctl.scaffold import scaffold_project

KIND_OF = {
    "configs/train.toml": "train",
    "configs/data/example.toml": "data",
    "configs/eval/lm-eval-harness.toml": "eval-suite",
    "configs/serve.toml": "serve",
    "configs/hw/a100x8.toml": "hardware",
}


@pytest.mark.parametrize("template,size", sorted(MODELS))
def test_every_template_and_size_writes_valid_configs(tmp_path, template, size):
    result = scaffold_project(template=template, size=size, name="p", output_dir=tmp_path)
    root = tmp_path / "p"
    model = load("model", root / f"configs/models/{template}-{size}.json")
    assert model.name == f"{template}-{size}" and model.template == TEMPLATE[template]
    assert result["model"]["parameters"] == count_parameters(model).total
    for rel, kind in KIND_OF.items():
        load(kind, root / rel)
    train = load("train", root / "configs/train.toml")
    assert (root / train.model.config_file).is_file()
    assert (root / train.data.config_file).is_file()
    assert train.data.seq_len <= model.max_seq_len
    data = load("data", root / "configs/data/example.toml")
    assert data.tokenizer.vocab_size == model.vocab_size
    for d in ("plans", "checkpoints", "site-configs"):
        assert (root / d).is_dir()
    assert "llmctl plan compute" in (root / "README.md").read_text()


def test_published_shapes(tmp_path):
    scaffold_project(template="llama", size="30b", name="a", output_dir=tmp_path)
    m = json.loads((tmp_path / "a/configs/models/llama-30b.json").read_text())
    assert (m["layers"], m["hidden"], m["heads"]) == (60, 6656, 52)  # LLaMA 33B
    scaffold_project(template="llama", size="70b", name="b", output_dir=tmp_path)
    m = json.loads((tmp_path / "b/configs/models/llama-70b.json").read_text())
    assert (m["layers"], m["hidden"], m["kv_heads"], m["ffn"]) == (80, 8192, 8, 28672)
    scaffold_project(template="gpt", size="7b", name="c", output_dir=tmp_path)
    m = json.loads((tmp_path / "c/configs/models/gpt-7b.json").read_text())
    assert (m["layers"], m["hidden"], m["heads"], m["norm"], m["activation"]) == (
        32, 4096, 32, "layernorm", "gelu")  # GPT-3 6.7B


def test_seed_quickstart_in_cwd(cli, in_tmp):
    r = cli("init", "scaffold", "--template", "gpt", "--size", "7b", "--name", "my-gpt-project")
    assert r.returncode == 0, r.stderr
    assert (in_tmp / "my-gpt-project/configs/models/gpt-7b.json").is_file()
    assert r.stdout.startswith("created my-gpt-project (gpt-7b: 6.66B parameters)")  # GPT-3 "6.7B"


def test_refuses_non_empty_folder_without_force(tmp_path):
    scaffold_project(template="llama", size="tiny", name="p", output_dir=tmp_path)
    (tmp_path / "p/mine.txt").write_text("keep me")
    before = (tmp_path / "p/configs/train.toml").read_text()
    (tmp_path / "p/configs/train.toml").write_text("edited")
    with pytest.raises(LlmctlError, match="exists and is not empty"):
        scaffold_project(template="llama", size="tiny", name="p", output_dir=tmp_path)
    assert (tmp_path / "p/configs/train.toml").read_text() == "edited"
    scaffold_project(template="llama", size="tiny", name="p", output_dir=tmp_path, force=True)
    assert (tmp_path / "p/configs/train.toml").read_text() == before
    assert (tmp_path / "p/mine.txt").read_text() == "keep me"  # --force keeps the user's other files


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "p").mkdir()
    scaffold_project(template="gpt", size="tiny", name="p", output_dir=tmp_path)
    assert (tmp_path / "p/configs/models/gpt-tiny.json").is_file()


@pytest.mark.parametrize("name", ["a/b", "../evil", "..", ".hidden", "x;rm -rf ~", "$(touch pwned)",
                                  "a b", "`id`", "it's", "", "-rf", "a\nb", "x" * 101])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(LlmctlError, match="unsafe project name"):
        scaffold_project(template="gpt", size="tiny", name=name, output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unsafe_name_via_cli_exits_2(cli, in_tmp):
    r = cli("init", "scaffold", "--template", "gpt", "--size", "tiny", "--name", "$(touch pwned)")
    assert r.returncode == 2 and "unsafe project name" in r.stderr and "Traceback" not in r.stderr
    assert list(in_tmp.iterdir()) == []


def test_failure_leaves_nothing_half_written(tmp_path, monkeypatch):
    import llmctl.scaffold as sc

    real = sc.project_files

    def broken(*a, **k):
        files, model = real(*a, **k)
        files["configs/zz/\0bad"] = "x"  # a NUL byte in a path fails in the middle of writing
        return files, model

    monkeypatch.setattr(sc, "project_files", broken)
    with pytest.raises((LlmctlError, ValueError)):
        scaffold_project(template="gpt", size="tiny", name="p", output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the project nor the staging folder


def test_site_is_validated_and_copied(tmp_path):
    result = scaffold_project(template="llama", size="7b", name="p", output_dir=tmp_path, site="slurm-a100-ib")
    assert result["site"] == "slurm-a100-ib"
    copied = read_data(tmp_path / "p/site-configs/slurm-a100-ib.toml")
    assert copied["scheduler"] == "slurm"
    with pytest.raises(LlmctlError, match="no site-config named 'nope'"):
        scaffold_project(template="llama", size="7b", name="q", output_dir=tmp_path, site="nope")
    assert not (tmp_path / "q").exists()


def test_json_output(cli, in_tmp):
    r = cli("init", "scaffold", "--template", "llama", "--size", "tiny", "--name", "t", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"]["file"] == "configs/models/llama-tiny.json"
    assert all(os.path.exists(os.path.join(out["project_dir"], f)) for f in out["files"])


def test_newer_families_scaffold_and_plan(cli, tmp_path):
    """Llama 3.1 405B, Mistral 7B and Qwen2.5 from `init scaffold`, planned by `plan compute`."""
    for template, size in (("llama3", "405b"), ("mistral", "7b"), ("qwen2.5", "72b")):
        r = cli("init", "scaffold", "--template", template, "--size", size, "--name", f"p-{size}",
                "--output-dir", str(tmp_path))
        assert r.returncode == 0, r.stderr
        root = tmp_path / f"p-{size}"
        r = cli("plan", "compute", "--model", f"configs/models/{template}-{size}.json", "--hardware",
                "configs/hw/a100x8.toml", "--nodes", "64", "--seq-len", "4096", "--global-batch", "1024",
                "--out", "plans/a.toml", cwd=root)
        assert r.returncode == 0, r.stderr
        assert (root / "plans" / "a.toml").is_file()
    data = json.loads((tmp_path / "p-405b" / "configs/models/llama3-405b.json").read_text())
    assert data["rope"]["scaling"] == "llama3" and data["rope"]["original_max_seq_len"] == 8192


def test_a_size_of_another_family_names_it(cli, tmp_path):
    r = cli("init", "scaffold", "--template", "llama", "--size", "8b", "--name", "x", "--output-dir", str(tmp_path))
    assert r.returncode == 2 and "llama sizes" in r.stderr and "8b is a size of llama3" in r.stderr
    assert not (tmp_path / "x").exists()
