"""The scaffold's "Next steps" lead to a plan on a login node: run as printed (issue 19)."""

from __future__ import annotations

import shlex

import pytest

from conftest import run_cli


def printed_steps(stdout: str) -> list[str]:
    lines = stdout.split("next:\n", 1)[1].splitlines()
    return [ln.strip() for ln in lines if ln.strip().startswith("llmctl ")]


def run_steps(steps, project, until="llmctl data prepare", site=None):
    """Run the printed commands up to the plan (data and training are others' tests)."""
    for step in steps:
        if step.startswith(until):
            break
        argv = shlex.split(step.split("  #")[0].replace("SITE", site or "SITE"))
        r = run_cli(*argv[1:], cwd=project)
        assert r.returncode == 0, f"{step}: {r.stderr}"


def test_a_7b_project_with_a_site_plans_from_the_sites_node_shape(tmp_path):
    r = run_cli("init", "scaffold", "--template", "llama", "--size", "7b", "--name", "p", "--site", "slurm-a100-ib",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    steps = printed_steps(r.stdout)
    assert steps[0].startswith("llmctl hw probe --site slurm-a100-ib --nodes 1 ")
    assert steps[-1].endswith("--launcher slurm --site slurm-a100-ib")
    readme = (tmp_path / "p" / "README.md").read_text()
    assert all(step in readme for step in steps)  # the README says the same
    run_steps(steps, tmp_path / "p")  # no GPU here: the plan must not need one
    assert (tmp_path / "p" / "plans" / "slurm-a100-ib.toml").is_file()


@pytest.mark.parametrize("size", ["7b", "70b"])
def test_a_large_project_without_a_site_names_one(tmp_path, size):
    r = run_cli("init", "scaffold", "--template", "llama", "--size", size, "--name", "p", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    steps = printed_steps(r.stdout)
    assert steps[0].startswith("llmctl site list")
    assert steps[1].startswith("llmctl hw probe --site SITE --nodes ")
    assert not any("hw probe --emit" in s for s in steps)  # never this machine's (absent) GPUs
    run_steps(steps, tmp_path / "p", site="slurm-a100-ib")  # SITE as the user picks it
    assert (tmp_path / "p" / "plans" / "slurm-a100-ib.toml").is_file()


def test_a_tiny_project_probes_this_machine(tmp_path):
    r = run_cli("init", "scaffold", "--template", "llama", "--size", "tiny", "--name", "p", "--json", cwd=tmp_path)
    steps = __import__("json").loads(r.stdout)["next_steps"]
    assert steps[0] == "llmctl hw probe --emit configs/hw/local.toml"
    run_steps(steps, tmp_path / "p")
    assert (tmp_path / "p" / "plans" / "local.toml").is_file()
