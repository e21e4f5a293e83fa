"""The shell commands shown in README.md and docs/user-guide.md, run as a user would paste
them (in a fresh project), so that the docs cannot drift from the CLI.

Every command of those code blocks must be listed in COMMANDS: run (with the exit code
it should give) or skipped with the reason it cannot run here. A command added to the
docs and not to this list fails the test, and so does a listed command that left the
docs. The user guide's table of model shapes is held equal to the presets.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/user-guide.md")
VENV_BIN = Path(sys.executable).parent

# command (continuations joined, comment dropped) -> ("run", exit code) or ("skip", why)
COMMANDS = {
    "make demo": ("skip", "minutes of training and serving; `make demo` is its own check (scripts/demo.sh)"),
    "make test": ("skip", "runs the whole suite, this test included"),
    "make venv && source .venv/bin/activate": ("skip", "the test runs in that venv already (its bin/ on PATH)"),
    'mkdir -p "/home/$USER" && cd "/home/$USER"': ("run", 0),
    "llmctl init scaffold --template llama --size 7b --name llama-experiment": ("run", 0),
    "cd llama-experiment": ("run", 0),
    "ls configs/": ("run", 0),
    "llmctl site list": ("run", 0),
    "llmctl site show slurm-a100-ib": ("run", 0),
    "llmctl site check slurm-a100-ib": ("run", 0),
    "llmctl plan compute --model configs/models/llama-7b.json --hardware configs/hw/a100x8.toml "
    "--train configs/train.toml --out plans/a100x8.toml": ("run", 0),
    "llmctl plan explain plans/a100x8.toml": ("run", 0),
    "llmctl train launch --plan plans/a100x8.toml --config configs/train.toml --launcher slurm "
    "--site slurm-a100-ib --nodes 1 --gpus-per-node 8 --run-dir runs/first --dry-run": ("run", 0),
    "llmctl job submit runs/first": ("skip", "submits to the slurm-a100-ib cluster's partitions, "
                                             "which this machine's SLURM does not have"),
    "llmctl schema train --check configs/train.toml": ("run", 0),
    "llmctl schema model > model.schema.json": ("run", 0),
    """echo '{"name": "x", "layers": 2, "hidden": 64, "heads": 4, "vocab_size": 10, "lr": 1}' > bad.json""":
        ("run", 0),
    "llmctl schema model --check bad.json": ("run", 2),
    "llmctl --debug schema model --check bad.json": ("run", 2),
    # docs/user-guide.md
    "pip install -e .": ("skip", "installs packages; the test runs in the installed venv"),
    "pip install -e '.[train]'": ("skip", "installs packages; the test runs in the installed venv"),
    "pip install -e '.[all,dev]'": ("skip", "installs packages; the test runs in the installed venv"),
    "llmctl init scaffold --template llama --size 7b --name llama-experiment [--output-dir D] [--site S] "
    "[--force]": ("skip", "a synopsis: the same command without its optional parts runs above"),
    'eval "$(llmctl completion bash)"': ("run", 0),
}


def doc_commands(text: str) -> list[tuple[str, str]]:
    """(command, its comment) of each line of the ```bash blocks; `\\` continuations joined."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # a comment starts at '  #' (the docs' style), never inside the quoted JSON
            cmd, _, comment = line.partition("  #")
            out.append((" ".join(cmd.split()), comment.strip()))
    return out


def all_commands() -> list[tuple[str, str, str]]:
    return [(doc, cmd, comment) for doc in DOCS for cmd, comment in doc_commands((ROOT / doc).read_text())]


def test_every_command_in_the_docs_is_run_or_skipped_with_a_reason():
    found = [cmd for _, cmd, _ in all_commands()]
    unlisted = [c for c in found if c not in COMMANDS]
    assert not unlisted, f"commands in the docs that this test neither runs nor skips: {unlisted}"
    gone = [c for c in COMMANDS if c not in found]
    assert not gone, f"commands listed here that left the docs: {gone}"


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """README's tour and the user guide's commands in one bash session, each command's exit
    code and output recorded. The tour makes its project in /home/$USER (as the docs say:
    the shipped cluster sites accept run folders only there); $USER is a fresh name here,
    and its folder is removed afterwards."""
    tmp = tmp_path_factory.mktemp("docs")
    user = f"llmctl-docs-{uuid.uuid4().hex[:8]}"
    lines = ["set +e", f"cd {tmp}"]
    for i, (doc, cmd, _) in enumerate(all_commands()):
        if COMMANDS[cmd][0] != "run":
            continue
        lines += [f"echo '@@begin {i}'", cmd, f"echo \"@@end {i} $?\"", f"echo '@@end {i}' >&2"]
    env = {**os.environ, "USER": user, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "LLMCTL_STATE_DIR": str(tmp / "state"), "XDG_CONFIG_HOME": str(tmp / "xdg"),
           "HOME": str(tmp), "OMP_NUM_THREADS": "1"}
    env.pop("LLMCTL_DEBUG", None)
    try:
        r = subprocess.run(["bash", "-c", "\n".join(lines)], env=env, capture_output=True, text=True,
                           timeout=600)
        results = {}
        for m in re.finditer(r"@@begin (\d+)\n(.*?)@@end \1 (\d+)\n", r.stdout, re.S):
            results[int(m.group(1))] = (int(m.group(3)), m.group(2))
        errs = dict.fromkeys(results, "")
        start = 0
        for m in re.finditer(r"@@end (\d+)\n", r.stderr):
            errs[int(m.group(1))] = r.stderr[start:m.start()]
            start = m.end()
        project = Path("/home") / user / "llama-experiment"
        yield {"results": results, "stderr": errs, "project": project, "raw": r}
    finally:
        shutil.rmtree(Path("/home") / user, ignore_errors=True)


def test_the_docs_commands_give_their_exit_codes(readme_run):
    bad = []
    for i, (doc, cmd, _) in enumerate(all_commands()):
        if COMMANDS[cmd][0] != "run":
            continue
        rc, out = readme_run["results"].get(i, (None, ""))
        if rc != COMMANDS[cmd][1]:
            err = readme_run["stderr"].get(i, "")[-800:]
            bad.append(f"{doc}: {cmd}\n  exit {rc}, expected {COMMANDS[cmd][1]}\n  {err}")
    assert not bad, "\n".join(bad)


def test_what_the_comments_promise_is_there(readme_run):
    """The comments beside the commands say what they make or print; hold them to it."""
    project = readme_run["project"]
    for doc, cmd, comment in all_commands():
        if cmd == "ls configs/":
            for name in comment.split():
                assert (project / "configs" / name.rstrip("/")).exists(), name
        if cmd == "llmctl plan explain plans/a100x8.toml":
            assert "plans/a100x8.png" in comment
            assert (project / "plans" / "a100x8.png").read_bytes()[:4] == b"\x89PNG"
    assert list((project / "runs" / "first").glob("*.sh")), "the dry run wrote no job script"
    i = next(i for i, (_, c, _) in enumerate(all_commands()) if c == "llmctl schema model --check bad.json")
    # README shows the error under the command, as a comment: its first words are what prints
    shown = (ROOT / "README.md").read_text().split("llmctl schema model --check bad.json\n", 1)[1].splitlines()[0]
    shown = shown.lstrip("# ").split("...")[0].rstrip(", ")
    assert readme_run["stderr"][i].startswith(shown), (shown, readme_run["stderr"][i])
    j = next(i for i, (_, c, _) in enumerate(all_commands()) if c.startswith("llmctl --debug schema"))
    assert "Traceback" in readme_run["stderr"][j] and "Traceback" not in readme_run["stderr"][i]


def test_user_guide_shapes_table_matches_the_presets():
    from llmctl.presets import model_fields

    text = (ROOT / "docs" / "user-guide.md").read_text()
    rows = re.findall(r"^\| (llama|gpt) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", text, re.M)
    assert len(rows) >= 6
    for template, sizes, shapes, heads, kv in rows:
        sizes, shapes, heads = sizes.split(" / "), shapes.split(" / "), heads.split(" / ")
        kvs = re.sub(r"\s*\(.*?\)", "", kv).split(" / ")
        assert len(sizes) == len(shapes) == len(heads), (template, sizes)
        for n, (size, shape, h) in enumerate(zip(sizes, shapes, heads)):
            f = model_fields(template, size.strip())
            layers, hidden = (int(x) for x in shape.strip().split("×"))
            assert (layers, hidden, int(h)) == (f["layers"], f["hidden"], f["heads"]), (template, size)
            want_kv = f.get("kv_heads") or f["heads"]
            shown = kvs[0].strip() if kvs[0].strip() == "same as heads" else kvs[n].strip()
            assert (f["heads"] if shown == "same as heads" else int(shown)) == want_kv, (template, size, kv)


def test_readme_serving_claims_match_the_serving_guide():
    """README says completions return logprobs and echo; docs/serving.md's field table
    (held to the server's protocol by its own test) must say the same."""
    readme = (ROOT / "README.md").read_text()
    serving = (ROOT / "docs" / "serving.md").read_text()
    if "completions with logprobs/echo" in readme:
        for field, endpoint in (("logprobs", "completions"), ("echo", "completions")):
            row = re.search(rf"^\| `{field}` \| {endpoint} \| (\w[\w ]*?) \|", serving, re.M)
            assert row and row.group(1) == "supported", (field, endpoint)
    if "chat with logprobs" in readme:
        row = re.search(r"^\| `logprobs`, `top_logprobs` \| chat \| (\w[\w ]*?) \|", serving, re.M)
        assert row and row.group(1) == "supported"
