"""The CLI: every group and verb exists, seed examples parse, errors exit 2 cleanly."""

from __future__ import annotations

import shlex

import click
import pytest

from llmctl import __version__
from llmctl.cli import cli, main

GROUPS = {
    "init": ["scaffold"], "hw": ["probe", "benchmark"], "plan": ["calibrate", "compute", "explain"],
    "data": ["prepare"], "train": ["launch"], "eval": ["run", "watch", "schedule"],
    "serve": ["start", "batch", "launch"], "job": ["submit", "status", "logs", "cancel", "list"],
    "site": ["list", "show", "check", "init"],
}
COMMANDS = ["export", "env", "schema", "completion", "doctor"]

# Every example command in the seed README, exactly as written there.
SEED_EXAMPLES = [
    "llmctl init scaffold --template gpt --size 7b --name my-gpt-project",
    "llmctl init scaffold --template llama --size 7b --name llama-experiment",
    "llmctl hw probe --emit configs/hw/local.toml",
    "llmctl hw probe --emit configs/hw/dgx-a100.toml --verbose",
    "llmctl hw benchmark --component memory --duration 30",
    "llmctl plan compute --model configs/models/gpt-7b.json --hardware configs/hw/local.toml --out plans/local.toml",
    "llmctl plan compute --model configs/models/llama-7b.json --hardware configs/hw/a100x8.toml "
    "--target-flops 2e15 --max-memory-gb 72 --out plans/llama-7b-a100x8.toml",
    "llmctl train launch --plan plans/local.toml --data configs/data/example.toml --launcher local",
    "llmctl train launch --plan plans/llama-7b-a100x8.toml --data configs/data/the-stack.toml "
    "--launcher slurm --nodes 4 --gpus-per-node 8",
    "llmctl eval run --checkpoint checkpoints/llama-7b/step-50000 --suite configs/eval/lm-eval-harness.toml "
    "--output results/eval-50k.json",
    "llmctl serve start --artifact artifacts/llama-7b-awq --port 8080 --scheduler vllm-like --max-batch-tokens 8192",
]


def resolve(argv: list[str]) -> tuple[click.Command, dict]:
    """Parse argv down to the leaf command without running it; returns (command, params)."""
    root = click.Context(cli, info_name="llmctl", **cli.context_settings)
    cmd, rest = cli.commands[argv[0]], list(argv[1:])
    parent = root
    if isinstance(cmd, click.Group):
        parent = click.Context(cmd, info_name=cmd.name, parent=root)
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    return cmd, cmd.make_context(cmd.name, rest, parent=parent).params


def test_every_group_and_verb_is_registered():
    assert set(cli.commands) == set(GROUPS) | set(COMMANDS)
    for group, verbs in GROUPS.items():
        assert sorted(cli.commands[group].commands) == sorted(verbs)


@pytest.mark.parametrize("example", SEED_EXAMPLES)
def test_seed_examples_parse_as_written(example):
    argv = shlex.split(example)[1:]
    cmd, params = resolve(argv)
    assert cmd.name == (argv[1] if argv[0] != "export" else "export")
    # every option given on the line arrived as a parameter value
    by_flag = {flag: opt.name for opt in cmd.params for flag in opt.opts}
    given = [t for t in argv if t.startswith("--")]
    assert given
    for flag in given:
        assert params[by_flag[flag]] not in (None, False), flag


def test_seed_examples_give_the_values_written():
    _, p = resolve(shlex.split(SEED_EXAMPLES[6])[1:])
    assert p["model_path"] == "configs/models/llama-7b.json" and p["target_flops"] == 2e15
    assert p["max_memory_gb"] == 72 and p["out"] == "plans/llama-7b-a100x8.toml"
    _, p = resolve(shlex.split(SEED_EXAMPLES[8])[1:])
    assert (p["launcher"], p["nodes"], p["gpus_per_node"]) == ("slurm", 4, 8)
    _, p = resolve(shlex.split(SEED_EXAMPLES[10])[1:])
    assert (p["port"], p["scheduler"], p["max_batch_tokens"]) == (8080, "vllm-like", 8192)
    _, p = resolve(shlex.split(SEED_EXAMPLES[4])[1:])
    assert (p["component"], p["duration"]) == ("memory", 30.0)


def all_paths():
    yield []
    for group, verbs in GROUPS.items():
        yield [group]
        for v in verbs:
            yield [group, v]
    for c in COMMANDS:
        yield [c]


@pytest.mark.parametrize("path", list(all_paths()), ids=lambda p: " ".join(p) or "llmctl")
def test_help_at_every_level(path, capsys):
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: llmctl")


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"llmctl {__version__}"


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "No such command 'frobnicate'" in capsys.readouterr().err


def test_bad_option_value_exits_2(capsys):
    assert main(["hw", "benchmark", "--component", "gpu"]) == 2
    assert "'gpu' is not one of" in capsys.readouterr().err


def test_zero_duration_is_refused(capsys):
    assert main(["hw", "benchmark", "--duration", "0"]) == 2
    assert "--duration" in capsys.readouterr().err


def test_user_error_has_no_traceback_and_debug_shows_it(cli, in_tmp):
    r = cli("site", "show", "no-such-site")
    assert r.returncode == 2
    assert r.stderr.startswith("error: no site-config named 'no-such-site'")
    assert "Traceback" not in r.stderr
    r = cli("--debug", "site", "show", "no-such-site")
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell, capsys):
    assert main(["completion", shell]) == 0
    assert "_LLMCTL_COMPLETE" in capsys.readouterr().out


def test_completion_completes_groups(cli):
    r = cli(env={"_LLMCTL_COMPLETE": "bash_complete", "COMP_WORDS": "llmctl si", "COMP_CWORD": "1"})
    assert r.returncode == 0 and "site" in r.stdout


def test_schema_lists_kinds_and_prints_json(capsys):
    import json

    assert main(["schema"]) == 0
    assert "eval-suite" in capsys.readouterr().out
    assert main(["schema", "site"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "SiteConfig" and "partitions" in schema["properties"]
    assert main(["schema", "nope"]) == 2


def test_env_json(capsys):
    import json

    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["llmctl"] == __version__ and info["hardware"]["cpus"] >= 1
    assert info["packages"]["click"]


def test_export_of_a_missing_checkpoint_is_a_clean_error(in_tmp, capsys):
    assert main(["export", "--checkpoint", "c", "--out", "artifacts/x"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "Traceback" not in err
    assert not (in_tmp / "artifacts").exists()


def test_schema_check_validates_files(tmp_path, capsys):
    good = tmp_path / "m.json"
    good.write_text('{"name": "m", "layers": 2, "hidden": 64, "heads": 4, "vocab_size": 100}')
    assert main(["schema", "model", "--check", str(good)]) == 0
    assert f"ok: {good} is a valid model file" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "m", "layers": 2, "hidden": 64, "heads": 4, "vocab_size": 100, "x": 1}')
    assert main(["schema", "model", "--check", str(bad)]) == 2
    assert "x: unknown key 'x'" in capsys.readouterr().err


def test_schema_program_carries_field_docs(tmp_path):
    """The `llmctl` program skips parsing field docstrings (a login-node saving) except for
    `schema`, whose output must still describe every documented field."""
    import json as _json

    from conftest import run_cli

    r = run_cli("schema", "train", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    par = _json.loads(r.stdout)["$defs"]["Parallel"]["properties"]
    assert par["pp"]["description"] == "Pipeline-parallel degree."
