"""Every command and option described, every command with an example, every --json with a
documented shape that the command really prints (issue 19)."""

from __future__ import annotations

import json
import shlex

import click
import pytest

from conftest import run_cli
from llmctl.cli import cli
from llmctl.cli.examples import EXAMPLES, JSON_SHAPES, NO_JSON
from test_cli import resolve


def leaves(cmd=cli, path=()):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from leaves(sub, path + (name,))
    else:
        yield " ".join(path), cmd


LEAVES = dict(leaves())


@pytest.mark.parametrize("path", sorted(LEAVES))
def test_every_option_and_argument_is_described(path):
    cmd = LEAVES[path]
    assert (cmd.help or "").strip(), f"{path}: no description"
    for p in cmd.params:
        if isinstance(p, click.Option):
            assert (p.help or "").strip(), f"{path} {p.opts[0]}: no help"
        else:  # click arguments have no help of their own: the command's text names them
            assert p.name.upper() in cmd.help, f"{path}: {p.name.upper()} not described in its help"


def test_every_group_is_described():
    for name, group in cli.commands.items():
        assert (group.help or "").strip(), name


@pytest.mark.parametrize("path", sorted(LEAVES))
def test_every_command_has_an_example_that_parses(path):
    cmd = LEAVES[path]
    lines = (cmd.epilog or "").splitlines()
    assert "Examples:" in lines, f"{path}: no Examples: in its help"
    examples = [ln.strip() for ln in lines if ln.strip().startswith("llmctl ")]
    assert examples, path
    for example in examples:
        argv = shlex.split(example)[1:]
        parsed, params = resolve(argv)
        assert parsed is cmd, example
    assert path in EXAMPLES


def test_json_options_and_documented_shapes_match():
    with_json = {path for path, cmd in LEAVES.items() if any(p.name == "as_json" for p in cmd.params)}
    assert with_json == set(JSON_SHAPES)
    for path in with_json:
        assert "--json prints " in LEAVES[path].epilog
    # The result-producing commands the issue named have it.
    assert {"train launch", "job submit", "export", "eval run", "serve launch", "serve batch"} <= with_json
    # Every other command says why it has none (a new command must pick one or the other).
    assert set(LEAVES) - with_json == set(NO_JSON)
    for path in NO_JSON:
        assert "No --json: it prints " in LEAVES[path].epilog


def test_generated_reference_shows_examples_and_shapes():
    from llmctl.docgen import cli_reference

    text = cli_reference()
    assert "llmctl train launch --plan plans/local.toml" in text
    assert "--json prints an object with the keys: run_dir, backend, dry_run, job_id, script, resolved." in text


def keys_of(out: str, path: str) -> None:
    data = json.loads(out)
    _, keys = JSON_SHAPES[path]
    rows = data if isinstance(data, list) else [data]
    for row in rows:
        missing = [k for k in keys if k not in row]
        assert not missing, f"{path} --json lacks {missing}"
    return data


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("jsonshapes")
    r = run_cli("init", "scaffold", "--template", "llama", "--size", "tiny", "--name", "p", "--json", cwd=root)
    assert r.returncode == 0, r.stderr
    keys_of(r.stdout, "init scaffold")
    return root / "p"


def env(project):
    return {"LLMCTL_STATE_DIR": str(project / "state"), "XDG_CONFIG_HOME": str(project / "xdg")}


def cli_json(project, path, *args):
    r = run_cli(*path.split(), *args, "--json", cwd=project, env=env(project))
    assert r.returncode == 0, f"{path}: {r.stderr}"
    return keys_of(r.stdout, path)


def test_json_shapes_of_the_login_node_commands(project):
    cli_json(project, "hw probe")
    r = run_cli("hw", "probe", "--emit", "configs/hw/local.toml", cwd=project)
    assert r.returncode == 0, r.stderr
    cli_json(project, "plan compute", "--model", "configs/models/llama-tiny.json", "--hardware",
             "configs/hw/local.toml", "--train", "configs/train.toml", "--out", "plans/local.toml")
    cli_json(project, "plan explain", "plans/local.toml")
    cli_json(project, "hw benchmark", "--component", "disk", "--duration", "0.2")
    cli_json(project, "site list")
    cli_json(project, "site show", "local")
    cli_json(project, "site check", "local")
    cli_json(project, "env")
    cli_json(project, "job list")


def ensure_plan(project):
    """The plan the login-node test writes; made here too, so no test depends on another's order."""
    if not (project / "plans" / "local.toml").is_file():
        for args in (("hw", "probe", "--emit", "configs/hw/local.toml"),
                     ("plan", "compute", "--model", "configs/models/llama-tiny.json", "--hardware",
                      "configs/hw/local.toml", "--train", "configs/train.toml", "--out", "plans/local.toml")):
            r = run_cli(*args, cwd=project, env=env(project))
            assert r.returncode == 0, r.stderr


def test_json_shapes_of_a_job_from_launch_to_cancel(project):
    ensure_plan(project)
    cli_json(project, "data prepare", "--config", "configs/data/example.toml")
    out = cli_json(project, "train launch", "--plan", "plans/local.toml", "--dry-run", "--run-dir", "runs/j")
    assert out["dry_run"] is True and out["job_id"] is None and out["resolved"]["kind"] == "train"
    sub = cli_json(project, "job submit", "runs/j")
    assert sub["backend"] == "local" and sub["job_id"]
    listed = cli_json(project, "job list")
    assert any(str(e["job_id"]) == str(sub["job_id"]) for e in listed)
    cli_json(project, "job status", "runs/j")
    cli_json(project, "job cancel", "runs/j")


def test_json_shape_of_a_serve_launch(project, tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text("{}")
    out = cli_json(project, "serve launch", "--artifact", str(art), "--dry-run", "--run-dir", str(project / "runs" / "s"))
    assert out["resolved"]["program"]["port"] == {"value": 8080, "source": "default"}


def exact(out: str, path: str):
    """The --json output of `path`, its top-level keys exactly the documented ones (in any order)."""
    data = json.loads(out)
    assert isinstance(data, dict) and sorted(data) == sorted(JSON_SHAPES[path][1]), f"{path}: {list(data)}"
    return data


def test_json_shape_of_site_init(tmp_path):
    from test_site_init import FIXTURES

    r = run_cli("site", "init", "--scheduler", "slurm", "--from", str(FIXTURES / "slurm"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    printed = exact(r.stdout, "site init")
    assert printed["written"] is None and printed["scheduler"] == "slurm" and printed["partitions"]
    plain = run_cli("site", "init", "--scheduler", "slurm", "--from", str(FIXTURES / "slurm"), cwd=tmp_path)
    assert printed["text"] == plain.stdout  # the same draft the command prints without --json
    r = run_cli("site", "init", "--scheduler", "pbs", "--from", str(FIXTURES / "pbs"), "-o", "mine.toml", "--json",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    written = exact(r.stdout, "site init")
    assert written["name"] == "mine" and written["scheduler"] == "pbs"
    assert (tmp_path / written["written"]).read_text() == written["text"]
    assert f"name = {json.dumps('mine')}" in written["text"]
    assert run_cli("site", "check", written["written"], cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("launcher", ["cron", "slurm", "slurm-chain"])
def test_json_shape_of_eval_schedule(tmp_path, launcher):
    (tmp_path / "run").mkdir()
    args = ("eval", "schedule", "--every", "2h", "--run-dir", "run", "--launcher", launcher)
    r = run_cli(*args, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = exact(r.stdout, "eval schedule")
    assert out["entry"] == run_cli(*args, cwd=tmp_path).stdout  # what it prints without --json
    assert out["installed"] is False and out["script"] is None and out["job_id"] is None
    assert (out["launcher"], out["every"], out["run_dir"]) == (launcher, "2h", str(tmp_path / "run"))


def test_json_shape_of_eval_watch_before_any_checkpoint(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    r = run_cli("eval", "watch", "--run-dir", "run", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = exact(r.stdout, "eval watch")
    assert out["run_dir"] == str(tmp_path / "run")
    assert all(out[k] == [] for k in ("evaluated", "skipped", "busy", "failed", "submitted", "pending", "rows"))
    assert out["table"] is None and out["plot"] is None
