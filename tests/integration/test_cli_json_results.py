"""The `--json` of the commands that need torch and a trained checkpoint (eval run, eval
watch, export, serve batch, plan calibrate), on one tiny run trained here: each prints
exactly the top-level keys llmctl/cli/examples.py documents, with values of the types
below, and agrees with what the command wrote (issue 19). tests/unit/test_cli_help.py
covers the login-node commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import run_cli

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import trainkit as T  # noqa: E402
from test_plan_calibrate_runs import PLAN_ARGS  # noqa: E402

from llmctl.cli.examples import JSON_SHAPES  # noqa: E402

pytest.importorskip("torch")

NONE = type(None)
# Per command: each documented key -> the types its value may have.
TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "eval run": {
        "results": (dict,), "group_subtasks": (dict,), "configs": (dict,), "versions": (dict,), "n-shot": (dict,),
        "higher_is_better": (dict,), "n-samples": (dict,), "config": (dict,), "git_hash": (str, NONE),
        "date": (float,), "pretty_env_info": (str,), "transformers_version": (NONE,), "upper_git_hash": (NONE,),
        "tokenizer_pad_token": (NONE,), "tokenizer_eos_token": (list,), "tokenizer_bos_token": (NONE,),
        "eot_token_id": (int,), "max_length": (int,), "task_hashes": (dict,), "model_source": (str,),
        "model_name": (str,), "model_name_sanitized": (str,), "system_instruction": (NONE,),
        "system_instruction_sha": (NONE,), "fewshot_as_multiturn": (bool,), "chat_template": (NONE,),
        "chat_template_sha": (NONE,), "start_time": (float,), "end_time": (float,),
        "total_evaluation_time_seconds": (str,)},
    "eval watch": {"run_dir": (str,), "evaluated": (list,), "skipped": (list,), "busy": (list,), "failed": (list,),
                   "submitted": (list,), "pending": (list,), "table": (str, NONE), "plot": (str, NONE),
                   "rows": (list,)},
    "export": {"direction": (str,), "source": (str,), "artifact": (str,), "format": (str,), "dtype": (str, NONE),
               "quantize": (str, NONE)},
    "serve batch": {"output": (str,), "counts": (dict,)},
    "plan calibrate": {"runs": (list,), "factor": (float,), "hardware": (str,), "key": (str,),
                       "old_tflops": (float,), "new_tflops": (float,), "written": (str, NONE)},
}


def shaped(r, path: str) -> dict:
    """The command's --json: exactly the documented keys (JSON objects have no order), each of its type."""
    assert r.returncode == 0, f"{path}: {r.stderr}"
    data = json.loads(r.stdout)
    documented = JSON_SHAPES[path][1]
    assert sorted(TYPES[path]) == sorted(documented), f"{path}: this test's TYPES differ from the documented keys"
    assert isinstance(data, dict) and sorted(data) == sorted(documented), f"{path}: {list(data)} != {documented}"
    wrong = {k: type(v).__name__ for k, v in data.items() if not isinstance(v, TYPES[path][k])
             or (isinstance(v, bool) and bool not in TYPES[path][k])}
    assert not wrong, f"{path}: values of unexpected types {wrong}"
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project with one 6-step run (checkpoint at step 6) and its plan."""
    root = T.make_project(tmp_path_factory.mktemp("jsonproj"), docs=20)
    T.prepare_data(root)
    run = T.make_run(root, "r1", steps=6, interval=6, eval_interval=6)
    r = T.run_train(run)
    assert r.returncode == 0, r.stderr
    return root, run


def cli(root: Path, *args: str):
    return run_cli(*args, "--json", cwd=root, env=T.quiet_env(), timeout=300)


def test_eval_run_json_is_the_results_file(trained):
    root, run = trained
    data = shaped(cli(root, "eval", "run", "--checkpoint", str(run), "--tasks", "arithmetic", "--limit", "2",
                      "--output", "eval/res.json"), "eval run")
    assert data == json.loads((root / "eval" / "res.json").read_text())  # what it wrote, no samples
    assert data["config"]["step"] == 6 and set(data["results"]) == {"arithmetic"}
    assert data["n-samples"]["arithmetic"]["effective"] == 2


def test_eval_watch_json_lists_the_evaluated_checkpoint(trained, tmp_path):
    root, run = trained
    data = shaped(cli(root, "eval", "watch", "--run-dir", str(run), "--tasks", "arithmetic", "--limit", "2"),
                  "eval watch")
    assert data["evaluated"] == ["step-00000006"] and data["failed"] == data["skipped"] == []
    assert [row["step"] for row in data["rows"]] == [6]
    assert Path(data["table"]).is_file() and Path(data["plot"]).is_file()
    again = shaped(cli(root, "eval", "watch", "--run-dir", str(run), "--tasks", "arithmetic"), "eval watch")
    assert again["evaluated"] == [] and again["skipped"] == ["step-00000006"] and again["rows"] == data["rows"]


def test_export_and_serve_batch_json(trained, tmp_path):
    root, run = trained
    exp = shaped(cli(root, "export", "--checkpoint", str(run), "--out", str(tmp_path / "art"), "--dtype", "fp32"),
                 "export")
    assert (exp["direction"], exp["format"], exp["dtype"], exp["quantize"]) == ("export", "hf", "fp32", None)
    assert (Path(exp["artifact"]) / "model.safetensors").is_file()
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                            "body": {"prompt": f"def f{i}(", "max_tokens": 2}}) + "\n"
                                for i in range(3)))
    out = tmp_path / "out.jsonl"
    res = shaped(cli(root, "serve", "batch", "--artifact", exp["artifact"], "--input", str(requests),
                     "--output", str(out)), "serve batch")
    assert res["output"] == str(out)
    assert res["counts"] == {"total": 3, "skipped": 0, "answered": 3, "errors": 0}
    assert len(out.read_text().splitlines()) == 3
    again = shaped(cli(root, "serve", "batch", "--artifact", exp["artifact"], "--input", str(requests),
                       "--output", str(out)), "serve batch")
    assert again["counts"] == {"total": 3, "skipped": 3, "answered": 0, "errors": 0}


def test_plan_calibrate_json(trained):
    root, run = trained
    assert run_cli("hw", "probe", "--emit", "hw.toml", cwd=root).returncode == 0
    r = run_cli("plan", "compute", "--model", "configs/models/tiny.json", "--hardware", "hw.toml", *PLAN_ARGS,
                "--out", str(run / "plan.toml"), cwd=root)
    assert r.returncode == 0, r.stderr
    printed = shaped(cli(root, "plan", "calibrate", str(run)), "plan calibrate")
    assert printed["written"] is None and [x["run"] for x in printed["runs"]] == [str(run)]
    assert printed["runs"][0]["steps"] == 4  # 6 steps, the first 2 left out
    written = shaped(cli(root, "plan", "calibrate", str(run), "--out", "cal.toml"), "plan calibrate")
    assert written["written"] == "cal.toml" and (root / "cal.toml").is_file()
    assert written["factor"] > 0 and written["new_tflops"] == pytest.approx(written["old_tflops"] * written["factor"])


def test_eval_watch_json_with_submitted_jobs(trained):
    import shutil
    import time

    root, run = trained
    copy = root / "runs" / "r2"  # a run of its own (the watcher above evaluated r1's), in the project
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    args = ("eval", "watch", "--run-dir", str(copy), "--submit", "--launcher", "local", "--tasks", "arithmetic",
            "--limit", "2")
    first = shaped(cli(root, *args), "eval watch")
    assert first["submitted"] == ["step-00000006"] and first["evaluated"] == [] and first["table"] is None
    (job,) = (copy / "eval" / "jobs").iterdir()
    end = time.monotonic() + 240  # only keeps a broken job from hanging the suite
    while not (job / "exit_code").is_file() and time.monotonic() < end:
        time.sleep(0.5)
    assert (job / "exit_code").read_text().strip() == "0", (job / "logs" / "job.out").read_text()
    second = shaped(cli(root, *args), "eval watch")
    assert second["evaluated"] == ["step-00000006"] and second["submitted"] == second["pending"] == []
    assert [row["checkpoint"] for row in second["rows"]] == ["step-00000006"]
