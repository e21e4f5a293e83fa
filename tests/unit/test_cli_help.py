"""Every command and option described, every command with an example, every --json with a
documented shape that the command really prints (issue 19)."""

from __future__ import annotations

import json
import shlex

import click
import pytest

from conftest import run_cli
from llmctl.cli import cli
from llmctl.cli.examples import EXAMPLES, JSON_SHAPES
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


def test_json_shapes_of_a_job_from_launch_to_cancel(project):
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
