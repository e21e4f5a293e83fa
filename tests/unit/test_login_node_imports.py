"""The login-node path imports no torch, deepspeed, mpi4py or transformers.

Each command runs in-process (`llmctl.cli.main`) inside a fresh interpreter, which
then reports which heavy modules ended up in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "deepspeed", "mpi4py", "transformers")

PROBE = """
import json, sys
from llmctl.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})
print(json.dumps({{"rc": rc, "heavy": heavy}}))
"""

COMMANDS = [
    ["--help"],
    ["init", "--help"],
    ["init", "scaffold", "--template", "llama", "--size", "7b", "--name", "p"],
    ["site", "list"],
    ["site", "show", "slurm-a100-ib"],
    ["site", "check", "local"],
    ["site", "init", "--help"],
    ["doctor"],
    ["schema", "plan"],
    ["plan", "--help"],
    ["plan", "compute", "--help"],
    ["train", "launch", "--help"],
    ["data", "prepare", "--help"],
    ["hw", "probe", "--emit", "local.toml"],
]

# Run inside a scaffolded tiny project: planning and rendering a job, as on a login node.
IN_PROJECT = [
    ["plan", "compute", "--model", "configs/models/llama-tiny.json", "--hardware", "configs/hw/a100x8.toml",
     "--train", "configs/train.toml",
     "--out", "plans/a100.toml"],
    ["train", "launch", "--plan", "plans/a100.toml", "--config", "configs/train.toml", "--launcher", "slurm",
     "--site", "slurm-a100-ib", "--nodes", "1", "--gpus-per-node", "8", "--dry-run", "--run-dir", "runs/r"],
    ["serve", "launch", "--artifact", "artifacts/a", "--launcher", "slurm", "--site", "slurm-a100-ib",
     "--dry-run", "--run-dir", "runs/s"],
    ["job", "list"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
def test_no_heavy_imports(argv, tmp_path):
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, r.stderr
    assert result["heavy"] == []


def test_no_heavy_imports_when_planning_and_rendering(tmp_path):
    from llmctl.scaffold import scaffold_project

    scaffold_project(template="llama", size="tiny", name="p", output_dir=tmp_path)
    (tmp_path / "p" / "artifacts" / "a").mkdir(parents=True)
    (tmp_path / "p" / "artifacts" / "a" / "config.json").write_text("{}")  # rendering only checks it is there
    # The site must see the project's folder (a shared filesystem there): see jobsites.py.
    from jobsites import see_tmp

    see_tmp(tmp_path / "p", "slurm-a100-ib")
    for argv in IN_PROJECT:
        r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], cwd=tmp_path / "p",
                           capture_output=True, text=True, timeout=120)
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["rc"] == 0, (argv, r.stderr)
        assert result["heavy"] == [], argv


def test_probe_would_notice_a_heavy_import(tmp_path):
    # The check itself can fail: a heavy import done on purpose shows up.
    pytest.importorskip("torch")
    code = PROBE.format(heavy=HEAVY).replace("rc = main", "import torch\nrc = main")
    r = subprocess.run([sys.executable, "-c", code, "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert "torch" in json.loads(r.stdout.strip().splitlines()[-1])["heavy"]
