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
    ["schema", "plan"],
    ["plan", "--help"],
    ["plan", "compute", "--help"],
    ["train", "launch", "--help"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
def test_no_heavy_imports(argv, tmp_path):
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, r.stderr
    assert result["heavy"] == []


def test_probe_would_notice_a_heavy_import(tmp_path):
    # The check itself can fail: a heavy import done on purpose shows up.
    pytest.importorskip("torch")
    code = PROBE.format(heavy=HEAVY).replace("rc = main", "import torch\nrc = main")
    r = subprocess.run([sys.executable, "-c", code, "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert "torch" in json.loads(r.stdout.strip().splitlines()[-1])["heavy"]
