"""The job's environment comes from the site: its interpreter (never the login node's)
and the paths it can see (through a container's mounts, or the shared filesystems).
A path the job could not see is refused before anything is written."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import run_cli

CONTAINER_SITES = ("slurm-h100-pyxis", "pbspro-a100", "k8s-h100")
# Paths a script may name that are neither host nor mounted paths: the shell, and the
# pod's shared-memory volume.
SYSTEM = ("/bin/bash", "/dev/shm", "/dev/null", "/proc")
HEALTH_PATH = "/health"  # HTTP, not a file: the Kubernetes probes' path (llmctl.schedulers.k8s)
PATH = re.compile(r"(?<![\w.$}/])/[A-Za-z0-9_.\-/#%]+")


def _cases(sites):
    from llmctl.jobs.golden import cases

    return [(s, b, k, spec) for s, b, k, spec in cases() if s in sites]


@pytest.mark.parametrize("site,backend,kind,spec", _cases(CONTAINER_SITES),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_container_scripts_name_only_mounted_paths_and_the_image_python(site, backend, kind, spec):
    from llmctl.config.site import parse_mount
    from llmctl.schedulers import get_scheduler
    from llmctl.sites import load_site

    script = get_scheduler(backend).render(spec).script
    cfg, _ = load_site(site)
    mounts = [parse_mount(m) for m in cfg.container.mounts]
    assert sys.executable not in script and sys.prefix not in script
    assert spec.python == cfg.container.python
    # Every path the program is given is inside the container (under a mount's DST).
    inside = [a for a in spec.program if a.startswith("/")] + [spec.job_run_dir]
    for p in inside:
        assert any(p == d or p.startswith(d + "/") for _, d, _ in mounts), (p, mounts)
    # Every path the script names is under a mount (SRC: scheduler directives, read on
    # the host; DST: inside the container), the image's python, or the shell.
    for p in PATH.findall(script):
        if p.startswith("//") or p == HEALTH_PATH:  # a URL's host (http://...), the server's health endpoint
            continue
        p = p.rstrip("/")
        ok = (p in SYSTEM or p in (cfg.container.python, cfg.container.image)
              or any(p == r or p.startswith(r + "/") for s, d, _ in mounts for r in (s, d)))
        assert ok, f"{site}/{backend}/{kind}: {p} is outside the site's mounts"


def test_golden_container_jobs_map_the_run_folder():
    spec = next(spec for s, b, k, spec in _cases(("slurm-h100-pyxis",)) if k == "train")
    assert spec.run_dir.startswith("/lustre/project/runs/")
    assert spec.job_run_dir == spec.run_dir.replace("/lustre/project", "/workspace", 1)
    assert spec.program[-1] == spec.job_run_dir


def test_venv_site_runs_its_venv_python_without_activate():
    from llmctl.jobs.golden import GOLDEN_DIR

    script = (GOLDEN_DIR / "slurm-a100-ib" / "slurm" / "train.sh").read_text()
    assert "activate" not in script
    assert " /shared/envs/llmctl/bin/python -m llmctl.train" in script


def _site(tmp_path, body):
    path = tmp_path / "site.toml"
    path.write_text('name = "site"\ndefault_partition = "p"\ngpu_request = "none"\n' + body
                    + '[partitions.p]\nnodes = 1\ncpus_per_node = 2\nmemory_gb = 2\n')
    return path


PLAN = '[inputs]\nmodel = "m.json"\nnodes = 1\ngpus_per_node = 1\nglobal_batch = 1\n\n[parallelism]\ndp = 1\n'


def test_unmapped_run_folder_is_refused_naming_path_and_mounts(tmp_path):
    (tmp_path / "plan.toml").write_text(PLAN)
    r = run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--launcher", "slurm",
                "--site", "slurm-h100-pyxis", "--run-dir", str(tmp_path / "run"), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert str(tmp_path / "run") in first and "/lustre/project:/workspace" in first, r.stderr
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))


def test_unmapped_artifact_is_refused_by_its_flag(tmp_path):
    art = tmp_path / "elsewhere" / "model"
    art.mkdir(parents=True)
    (art / "config.json").write_text("{}")
    site = _site(tmp_path, f'scheduler = "slurm"\n[container]\nruntime = "pyxis"\nimage = "img"\n'
                           f'python = "/usr/bin/python3"\nmounts = ["{tmp_path}/proj:/workspace"]\n')
    r = run_cli("serve", "launch", "--artifact", str(art), "--launcher", "slurm", "--site", str(site),
                "--run-dir", str(tmp_path / "proj" / "run"), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"--artifact {art} is not visible inside the job" in r.stderr
    assert f"{tmp_path}/proj:/workspace" in r.stderr.splitlines()[0]
    assert not (tmp_path / "proj" / "run").exists()


def test_training_config_paths_are_mapped_into_the_container(tmp_path):
    import tomllib

    proj = tmp_path / "proj"
    proj.mkdir()
    site = _site(tmp_path, f'scheduler = "slurm"\n[container]\nruntime = "pyxis"\nimage = "img"\n'
                           f'python = "/usr/bin/python3"\nmounts = ["{proj}:/workspace"]\n')
    (proj / "plan.toml").write_text(PLAN.replace('"m.json"', f'"{proj}/m.json"'))
    r = run_cli("train", "launch", "--plan", str(proj / "plan.toml"), "--data", str(proj / "data.toml"),
                "--launcher", "slurm", "--site", str(site), "--run-dir", str(proj / "run"), "--dry-run",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = tomllib.loads((proj / "run" / "config.toml").read_text())
    assert cfg["model"]["config_file"] == "/workspace/m.json"
    assert cfg["data"]["config_file"] == "/workspace/data.toml"
    script = (proj / "run" / "job.sh").read_text()
    assert "export LLMCTL_RUN_DIR=/workspace/run" in script
    assert 'LLMCTL_CONFIG="$LLMCTL_RUN_DIR/config.toml"' in script
    assert "--container-workdir=/workspace/run" in script


def test_batch_site_without_python_is_refused(tmp_path):
    site = _site(tmp_path, 'scheduler = "slurm"\n')
    (tmp_path / "plan.toml").write_text(PLAN)
    r = run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--launcher", "slurm",
                "--site", str(site), "--run-dir", str(tmp_path / "run"), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "which python runs on its compute nodes" in r.stderr
    assert not (tmp_path / "run").exists()


def test_container_site_needs_the_image_python(tmp_path):
    site = _site(tmp_path, 'scheduler = "slurm"\n[container]\nruntime = "pyxis"\nimage = "img"\n')
    r = run_cli("site", "check", str(site), cwd=tmp_path)
    assert r.returncode == 2 and "container" in r.stderr and "python" in r.stderr


def test_shared_filesystems_bound_what_a_batch_job_sees(tmp_path):
    site = _site(tmp_path, f'scheduler = "slurm"\npython = "/shared/venv/bin/python"\n'
                           f'[filesystems]\nshared = "/shared"\n')
    (tmp_path / "plan.toml").write_text(PLAN)
    r = run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--launcher", "slurm",
                "--site", str(site), "--run-dir", str(tmp_path / "run"), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "shared filesystems: /shared" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["demo\u202eexe.hs", "a\nb", "tab\there", " lead"])
def test_hostile_job_name_is_refused_before_anything_is_written(tmp_path, name):
    (tmp_path / "plan.toml").write_text(PLAN)
    r = run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--name", name,
                "--run-dir", str(tmp_path / "run"), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "--name" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
