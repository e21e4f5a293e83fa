"""The bubblewrap container runtime: what the site-config accepts, and the sandbox the job
script builds (tests/integration/test_bwrap_site.py runs it on the local SLURM cluster)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from llmctl.config.site import BWRAP_IMAGE_DIR, Container, SiteConfig

PATH = re.compile(r"(?<![\w.$}/])/[A-Za-z0-9_.\-/#%]+")
# What every sandbox has besides the site's mounts and the image (the job script's SANDBOX).
SANDBOX_SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/proc", "/dev", "/tmp", "/etc/hosts", "/etc/resolv.conf",
                  "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/slurm", "/run/munge", "/bin/bash")


def _container(**kw) -> Container:
    return Container.model_validate({"runtime": "bubblewrap", "image": "/srv/llmctl/prefix",
                                     "python": "/opt/llmctl/bin/python", **kw})


def test_a_bubblewrap_container_needs_an_image_folder_and_a_python_inside_the_sandbox():
    _container(mounts=["/srv/project:/workspace", "/srv/data:/data:ro"])
    _container(python="/usr/bin/python3")  # the system's, which every sandbox has
    with pytest.raises(ValueError, match="the image is a folder, by absolute path"):
        _container(image="registry.example.org/llmctl:1")
    with pytest.raises(ValueError, match="is not inside the sandbox.*/opt/llmctl/bin/python"):
        _container(python="/shared/envs/llmctl/bin/python")
    with pytest.raises(ValueError, match="is not inside the sandbox"):
        _container(python="python3")


@pytest.mark.parametrize("dst", ["/", "/usr/local/data", "/opt/llmctl", "/opt/llmctl/extra", "/tmp", "/proc/x",
                                 "/etc/slurm"])
def test_a_mount_may_not_cover_the_sandbox_s_own_folders(dst):
    with pytest.raises(ValueError, match="is the sandbox's own"):
        _container(mounts=[f"/srv/project:{dst}"])


def test_the_template_mounts_the_image_where_the_config_says():
    from llmctl.resources import data_dir

    text = (data_dir("templates") / "jobs" / "_common.sh.j2").read_text()
    assert f"/opt/llmctl\n" in text and BWRAP_IMAGE_DIR == "/opt/llmctl"


def _bwrap_cases():
    from llmctl.jobs.golden import cases

    return [c for c in cases() if c[0] == "local-bwrap"]


@pytest.mark.parametrize("site,backend,kind,spec", _bwrap_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_golden_bwrap_scripts_name_only_mounts_the_image_and_the_sandbox_s_system(site, backend, kind, spec):
    from llmctl.config.site import parse_mount
    from llmctl.schedulers import get_scheduler

    script = get_scheduler(backend).render(spec).script
    mounts = [parse_mount(m) for m in spec.container.mounts]
    assert spec.python.startswith(BWRAP_IMAGE_DIR + "/")
    assert f'"${{SANDBOX[@]}}" {spec.python}' in script
    for p in PATH.findall(script):
        if p.startswith("//"):
            continue
        p = p.rstrip("/")
        ok = (any(p == r or p.startswith(r + "/") for r in (*SANDBOX_SYSTEM, BWRAP_IMAGE_DIR, spec.container.image))
              or any(p == r or p.startswith(r + "/") for s, d, _ in mounts for r in (s, d)))
        assert ok, f"{site}/{backend}/{kind}: {p} is neither mounted nor the sandbox's own"


def _render(tmp_path, mounts, run_dir):
    from llmctl.jobs.launch import train_program
    from llmctl.jobs.resolve import JobRequest, resolve
    from llmctl.schedulers import get_scheduler

    site = SiteConfig.model_validate({
        "name": "bw", "scheduler": "slurm", "default_partition": "p", "gpu_request": "none",
        "partitions": {"p": {"nodes": 1, "cpus_per_node": 2, "memory_gb": 2}},
        "container": {"runtime": "bubblewrap", "image": "/srv/img $(touch x)", "python": "/opt/llmctl/bin/python",
                      "mounts": mounts}})
    req = JobRequest(kind="train", backend="slurm", run_dir=run_dir, program=train_program(run_dir), name="t")
    return get_scheduler("slurm").render(resolve(site, req, None)).script


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_sandbox_arguments_are_quoted_and_nested_mounts_bound_after_their_parent(tmp_path):
    script = _render(tmp_path, ["/srv/data sets:/workspace/data:ro", "/srv/my 'project':/workspace"],
                     "/srv/my 'project'/runs/r 1")
    define = script[script.index("SANDBOX=("):]
    define = define[:define.index("\n)\n") + 3]
    # bash reads the array back as exactly the arguments bwrap gets.
    out = subprocess.run(["bash", "-c", define + 'printf "%s\\n" "${SANDBOX[@]}"'], capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout.splitlines()
    assert not (tmp_path / "x").exists()
    assert out[:4] == ["env", "--ignore-signal=INT,QUIT,TERM,USR1,USR2", "bwrap", "--die-with-parent"]
    binds = [out[i:i + 3] for i, a in enumerate(out) if a in ("--bind", "--ro-bind")]
    assert binds[-3:] == [["--bind", "/srv/my 'project'", "/workspace"],
                          ["--ro-bind", "/srv/data sets", "/workspace/data"],
                          ["--ro-bind", "/srv/img $(touch x)", "/opt/llmctl"]]
    assert out[-4:] == ["--chdir", "/workspace/runs/r 1", "env", "--default-signal=INT,QUIT,TERM,USR1,USR2"]
    assert "--unshare-net" not in out and "--unshare-all" not in out  # ranks talk over the host's network
