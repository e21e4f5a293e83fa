"""Hostile values — in the job name, an environment value, a data path — render
to scripts that `bash -n` accepts and that, run, execute nothing injected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.jobs.resolve import JobRequest, resolve
from llmctl.schedulers import get_scheduler

HOSTILE = ["x; touch {m}", "$(touch {m})", "`touch {m}`", "a'b\"c; touch {m}", "l1\ntouch {m}\n",
           "sp ace $HOME \\ {m}", "'; touch {m}; '", "\"$(touch {m})\""]


def site(tmp_path, scheduler="local", env_value="ok"):
    from llmctl.config.base import validate_data
    from llmctl.config.site import SiteConfig

    data = {"name": "hostile", "scheduler": scheduler, "default_partition": "p", "gpu_request": "none",
            "launcher": "srun", "partitions": {"p": {"nodes": 1, "cpus_per_node": 2, "memory_gb": 2}},
            "env": {"EVIL": env_value}}
    if scheduler == "k8s":
        data["container"] = {"runtime": "kubernetes", "image": "img:1", "python": "python3", "mounts": ["/w:/w"]}
    return validate_data(data, SiteConfig, "hostile")


@pytest.mark.parametrize("template", HOSTILE)
@pytest.mark.parametrize("backend", ["local", "slurm", "pbs"])
def test_hostile_values_never_execute(tmp_path, template, backend):
    marker = tmp_path / "PWNED"
    value = template.format(m=marker)
    run = tmp_path / "run dir; $(touch x)"
    data_path = f"{tmp_path}/data {value}"
    # The program prints its arguments and environment back, so we can check them.
    req = JobRequest(kind="eval", backend=backend, run_dir=str(run), name=value,
                     program=["-c", "import os, sys; print(repr(sys.argv[1:])); print(repr(os.environ['EVIL']));"
                                    "print(repr(os.environ['LLMCTL_JOB_NAME']))", data_path],
                     python=sys.executable)
    spec = resolve(site(tmp_path, {"local": "local", "slurm": "slurm", "pbs": "pbs"}[backend], value), req)
    script = get_scheduler(backend).render(spec).script
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    if backend != "local":
        # Outside an allocation srun does not exist: run the script with a stand-in
        # srun that executes its command, like SLURM would.
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
        (fake / "scontrol").write_text("#!/bin/bash\nhostname\n")
        for f in fake.iterdir():
            f.chmod(0o755)
        env = {"PATH": f"{fake}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "1"}
    else:
        env = {"PATH": "/usr/bin:/bin"}
    run.mkdir()
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not marker.exists(), "an injected command ran"
    lines = out.stdout.strip().splitlines()
    assert repr([data_path]) in lines and repr(value) in lines  # values arrive intact


def test_newline_in_run_folder_is_refused_cleanly(tmp_path):
    from conftest import run_cli

    plan = tmp_path / "p.toml"
    plan.write_text('[inputs]\nmodel = "m.json"\n\n[parallelism]\n')
    r = run_cli("train", "launch", "--plan", str(plan), "--dry-run", "--run-dir", f"{tmp_path}/a\nb", cwd=tmp_path)
    assert r.returncode == 2 and "control character" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("a*"))


def test_hostile_values_in_kubernetes_manifest_stay_data(tmp_path):
    import yaml

    value = "x\n- injected: true\n\"quote' $(touch /tmp/x)"
    req = JobRequest(kind="eval", backend="k8s", run_dir="/w/run", name=value, program=["-c", value],
                     python="python3")
    spec = resolve(site(tmp_path, "k8s", value), req)
    docs = list(yaml.safe_load_all(get_scheduler("k8s").render(spec).script))
    container = docs[-1]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["EVIL"] == value and env["LLMCTL_JOB_NAME"] == value
    # the shell command quotes the value: bash would pass it as one argument
    cmd = container["command"][2]
    out = subprocess.run(["bash", "-c", cmd.replace("exec python3", "printf '%s\\n'")],
                         capture_output=True, text=True)
    assert out.stdout == f"-c\n{value}\n"
