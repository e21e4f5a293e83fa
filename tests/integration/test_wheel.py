"""A non-editable install works: the wheel carries templates/, solvers/ and site-configs/.

Builds the wheel, installs it into a fresh virtual environment, and runs the
installed `llmctl` from an unrelated folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=600)
    (whl,) = out.glob("llmctl-*.whl")
    return whl


def test_wheel_contains_the_data_folders(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("llmctl/_data/site-configs/local.toml", "llmctl/_data/templates/scaffold/train.toml.j2",
                     "llmctl/_data/solvers/README.md", "llmctl/cli/__init__.py"):
        assert expected in names
    assert not any(n.startswith(("tests/", "docs/")) for n in names)


def test_installed_wheel_scaffolds_from_another_folder(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin/python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    llmctl = str(env_dir / "bin/llmctl")
    r = subprocess.run([llmctl, "init", "scaffold", "--template", "llama", "--size", "tiny", "--name", "proj",
                        "--site", "slurm-a100-ib", "--json"], cwd=work, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (work / "proj/configs/models/llama-tiny.json").is_file()
    assert (work / "proj/site-configs/slurm-a100-ib.toml").is_file()
    r = subprocess.run([llmctl, "env", "--json"], cwd=work, capture_output=True, text=True, timeout=120)
    paths = json.loads(r.stdout)["paths"]
    assert "site-packages" in paths["templates"] and str(REPO) not in paths["templates"]
    r = subprocess.run([llmctl, "site", "list", "--json"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    shipped = [e for e in json.loads(r.stdout) if e["origin"] == "shipped"]
    assert {e["name"] for e in shipped} >= {"local", "slurm-a100-ib", "k8s-h100"}
    assert all("site-packages" in e["path"] for e in shipped)


def test_installed_wheel_solves_a_plan(wheel, tmp_path):
    """`plan compute` loads solvers/degrees.py and solvers/stages.py from the wheel (importlib.resources)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    r = subprocess.run([str(env_dir / "bin/python"), "-m", "pip", "install", "-q", str(wheel)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "m.json").write_text(json.dumps({"name": "m", "template": "llama", "layers": 8, "hidden": 1024,
                                             "heads": 8, "kv_heads": 4, "vocab_size": 32000,
                                             "max_seq_len": 2048}))
    r = subprocess.run([str(env_dir / "bin/llmctl"), "plan", "compute", "--model", "m.json", "--site",
                        "slurm-h100-pyxis", "--nodes", "2", "--global-batch", "32", "--json"],
                       cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    par = data["parallelism"]
    assert par["tp"] * par["pp"] * par["dp"] * par["cp"] == 16 and sum(par["layers_per_stage"]) == 8
    assert data["solver"]["status"] == "optimal" and data["solver"]["variables"] > 0
