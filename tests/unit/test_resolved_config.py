"""Every launch writes resolved.json (each effective setting and its source) and prints a
short block saying which source overrode which: no silent overrides (issue 19)."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

PLAN = """[inputs]
model = "configs/models/llama-tiny.json"
nodes = 1
gpus_per_node = 1
global_batch = 8
seq_len = 128

[parallelism]
dp = 1
micro_batch = 4
grad_accum = 2
"""


def env(tmp_path):
    return {"LLMCTL_STATE_DIR": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A scaffolded tiny project whose train.toml asks for micro batch 2 (the plan says 4)."""
    root = tmp_path_factory.mktemp("resolved")
    r = run_cli("init", "scaffold", "--template", "llama", "--size", "tiny", "--name", "demo", cwd=root)
    assert r.returncode == 0, r.stderr
    proj = root / "demo"
    train = proj / "configs" / "train.toml"
    text = train.read_text()
    assert "micro_batch_size = 4" in text
    train.write_text(text.replace("micro_batch_size = 4", "micro_batch_size = 2")
                     .replace("[parallel]", "[parallel]\nsequence_parallel = true"))
    (proj / "plans" / "p.toml").write_text(PLAN)
    return proj


def launch(project, tmp_path, *args):
    run = tmp_path / "run"
    r = run_cli("train", "launch", "--plan", "plans/p.toml", "--dry-run", "--run-dir", str(run), *args,
                cwd=project, env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    return json.loads((run / "resolved.json").read_text()), r.stderr


def test_sources_of_a_flag_a_set_a_plan_value_a_file_value_and_a_default(project, tmp_path):
    doc, err = launch(project, tmp_path, "--config", "configs/train.toml", "--data", "configs/data/example.toml",
                      "--set", "account=proj42", "--set", "env.NCCL_DEBUG=INFO", "--nodes", "1")
    assert doc["version"] == 1 and doc["kind"] == "train" and doc["run_dir"] == str(tmp_path / "run")
    job, train = doc["job"], doc["train"]
    assert job["account"] == {"value": "proj42", "source": "flag --set"}
    assert job["site.env.NCCL_DEBUG"] == {"value": "INFO", "source": "flag --set"}
    assert job["nodes"] == {"value": 1, "source": "flag --nodes"}
    assert job["launcher"] == {"value": "local", "source": "default"}
    assert job["time"]["source"].startswith("site local")
    assert train["data.config_file"]["source"] == "flag --data"
    assert train["data.config_file"]["overrode"] == [
        {"value": "configs/data/example.toml", "source": "train config configs/train.toml"}]
    assert train["parallel.tp"] == {"value": 1, "source": "plan plans/p.toml"}
    assert train["training.max_steps"]["source"] == "train config configs/train.toml"
    assert train["optimizer.eps"] == {"value": 1e-08, "source": "default"}
    # The plan's micro batch won over the file's, and says so.
    assert train["parallel.micro_batch_size"] == {
        "value": 4, "source": "plan plans/p.toml",
        "overrode": [{"value": 2, "source": "train config configs/train.toml"}]}
    assert ("  parallel.micro_batch_size = 4  from plan plans/p.toml "
            "(train config configs/train.toml said 2)") in err.splitlines()
    # A value the job does not use is said, not dropped in silence.
    assert train["parallel.sequence_parallel"]["unused"] == "tensor parallelism is off (tp = 1)"
    assert "parallel.sequence_parallel = true  from train config configs/train.toml; not used:" in err
    assert f"# resolved settings and their sources (all of them: {tmp_path / 'run' / 'resolved.json'}):" in err
    # The file is part of the reviewed run folder.
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "resolved.json" in manifest["sha256"]


def test_a_plan_size_and_the_site_are_named(project, tmp_path):
    doc, _ = launch(project, tmp_path, "--config", "configs/train.toml", "--site", "local", "--launcher", "local")
    assert doc["job"]["nodes"] == {"value": 1, "source": "plan plans/p.toml"}
    assert doc["job"]["site"] == {"value": "local", "source": "flag --site"}
    assert doc["job"]["launcher"] == {"value": "local", "source": "flag --launcher"}


def test_the_projects_train_config_is_the_default_config(project, tmp_path):
    doc, err = launch(project, tmp_path)
    src = "train config configs/train.toml (project default)"
    assert doc["train"]["training.max_steps"]["source"] == src
    assert doc["train"]["parallel.micro_batch_size"]["overrode"] == [{"value": 2, "source": src}]
    assert src in err


def test_outside_a_project_the_run_config_comes_from_the_plan(project, tmp_path):
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.toml").write_text(PLAN)
    doc, _ = launch(tmp_path, tmp_path)
    assert doc["train"]["model.name"] == {"value": "llama-tiny", "source": "plan plans/p.toml"}
    assert doc["train"]["training.max_steps"] == {"value": 1000, "source": "default"}


def test_an_array_records_each_tasks_settings(project, tmp_path):
    from jobsites import see_tmp

    see_tmp(project, "slurm-a100-ib")  # the project's copy of the site shares the project folder
    other = project / "configs" / "train-b.toml"
    other.write_text((project / "configs" / "train.toml").read_text().replace("lr = ", "lr = 0.5 #"))
    run = project / "runs" / "array"
    r = run_cli("train", "launch", "--plan", "plans/p.toml", "--dry-run", "--run-dir", str(run),
                "--config", "configs/train.toml", "--config", str(other), "--launcher", "slurm",
                "--site", "slurm-a100-ib", cwd=project, env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    doc = json.loads((run / "resolved.json").read_text())
    assert len(doc["tasks"]) == 2 and doc["train"] == doc["tasks"][0]
    assert doc["tasks"][1]["optimizer.lr"] == {"value": 0.5, "source": f"train config {other}"}
    assert doc["job"]["partition"]["source"] == "site slurm-a100-ib"
    assert "an array of 2 configs" in r.stderr


def test_a_serve_launch_writes_its_programs_sources(project, tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text("{}")
    (tmp_path / "in.jsonl").write_text("")
    r = run_cli("serve", "launch", "--kind", "batch", "--artifact", str(art), "--input", str(tmp_path / "in.jsonl"),
                "--output", str(tmp_path / "out.jsonl"), "--dry-run", "--run-dir", str(tmp_path / "sv"),
                cwd=project, env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "sv" / "resolved.json").read_text())
    assert doc["kind"] == "serve-batch" and "train" not in doc
    assert doc["program"]["artifact"] == {"value": str(art), "source": "flag --artifact"}
    assert doc["program"]["config"] == {"value": "built-in serve defaults", "source": "default"}
    assert f"serve-batch.artifact = {art}  from flag --artifact" in r.stderr


def test_an_eval_job_records_its_sources(tmp_path, monkeypatch):
    from llmctl.jobs.launch import prepare_eval_job

    monkeypatch.setenv("LLMCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    run, _ = prepare_eval_job(checkpoint=str(tmp_path / "ckpt"), tasks="wikitext", run_dir=str(tmp_path / "ev"),
                              settings={"account": "a1"})
    doc = json.loads((run.path / "resolved.json").read_text())
    assert doc["program"]["checkpoint"] == {"value": str(tmp_path / "ckpt"), "source": "flag --checkpoint"}
    assert doc["program"]["tasks"] == {"value": "wikitext", "source": "flag --tasks"}
    assert doc["program"]["suite"] == {"value": "the built-in suite", "source": "default"}
    assert doc["program"]["output"] == {"value": str(tmp_path / "ev" / "results.json"), "source": "default"}
    assert doc["job"]["account"] == {"value": "a1", "source": "flag"}


def test_an_eval_job_carries_limit_and_batch_size_into_its_script(tmp_path, monkeypatch):
    """`eval watch --submit --limit N --batch-size B` hands both to the job's `eval run`."""
    from llmctl.jobs.launch import prepare_eval_job

    monkeypatch.setenv("LLMCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    run, _ = prepare_eval_job(checkpoint=str(tmp_path / "ckpt"), run_dir=str(tmp_path / "ev"), limit=7,
                              batch_size=3)
    script = next(p for p in run.path.iterdir() if p.suffix == ".sh").read_text()
    assert "--limit 7" in script and "--batch-size 3" in script
    doc = json.loads((run.path / "resolved.json").read_text())
    assert doc["program"]["limit"] == {"value": 7, "source": "flag --limit"}
    assert doc["program"]["batch_size"] == {"value": 3, "source": "flag --batch-size"}
