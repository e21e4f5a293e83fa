"""The bubblewrap site (site-configs/local-bwrap.toml) on the local SLURM cluster: every rank
runs in a sandbox in which only the site's mounts, the system's /usr, /proc, /dev, an empty
/tmp and the image (a prefix built by scripts/bwrap-prefix.sh) exist.

Through the real CLI, with a copy of the shipped site-config pointed at this test's folders:
a two-rank training job (srun, TCP rendezvous inside the sandboxes) writes its checkpoints
into the mounted run folder; an eval job (afterok) scores the checkpoint; the exported
model is served by a persistent job that answers HTTP on 127.0.0.1 and stops cleanly when
cancelled (the signal reaches the program through bwrap). A probe run through the job's own
SANDBOX, under srun, sees no host path outside the mounts; a job naming one is refused
before anything is written.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, have, needs, run_cli

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
sys.path.insert(0, str(REPO / "tests" / "unit"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from jobsupport import slurm_up, wait_state  # noqa: E402
from trainkit import make_project, prepare_data, quiet_env, train_toml  # noqa: E402

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TRAIN = train_toml(steps=6, interval=3, warmup=2, eval_batches=1, lr=None, seed=None, schedule=None)

# Two CPU ranks (one srun task each), data parallel.
PLAN = """[inputs]
model = "configs/models/tiny.json"
nodes = 1
gpus_per_node = 2
seq_len = 32
global_batch = 8

[parallelism]
dp = 2
micro_batch = 4
grad_accum = 1
"""

# What the probe reports from inside the sandbox.
PROBE = """
import json, os, sys
outside, project, repo = sys.argv[1:4]
def writable(d):
    try:
        open(os.path.join(d, ".llmctl-probe"), "w").close()
        os.remove(os.path.join(d, ".llmctl-probe"))
        return True
    except OSError:
        return False
print(json.dumps({
    "root": sorted(os.listdir("/")), "etc": sorted(os.listdir("/etc")), "tmp": os.listdir("/tmp"),
    "run": sorted(os.listdir("/run")),
    "cwd": os.getcwd(), "prefix": sys.prefix,
    "outside": os.path.exists(outside), "project_host_path": os.path.exists(project),
    "repo": os.path.exists(repo), "home": os.path.exists("/root"),
    "workspace_writable": writable("/workspace"), "image_writable": writable("/opt/llmctl"),
    "env": os.environ.get("LLMCTL_PROBE_ENV"),
    "run_dir": os.environ.get("LLMCTL_RUN_DIR"),
}))
"""


def _python_minor(py: str) -> str:
    return subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def bw(tmp_path_factory):
    """The image (built here), a project with prepared data, a folder outside the mounts, and
    the site-config: the shipped one with its image and mounts pointed at these folders."""
    needs("slurm", slurm_up(), "no running SLURM cluster (bash scripts/slurm-local.sh up)")
    needs("slurm", have("bwrap"), "bwrap is not installed (bash scripts/slurm-local.sh up installs bubblewrap)")
    needs("slurm", _python_minor("/usr/bin/python3") == _python_minor(sys.executable),
          "the sandbox's /usr/bin/python3 is not this venv's Python version (scripts/bwrap-prefix.sh)")
    base = tmp_path_factory.mktemp("bwrap")
    prefix = base / "prefix"
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(REPO / "scripts" / "bwrap-prefix.sh"), str(prefix), sys.prefix],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"image built in {time.monotonic() - t0:.1f} s: {r.stdout.strip()}")

    proj = make_project(base / "proj")
    prepare_data(proj)
    (proj / "configs" / "train.toml").write_text(TRAIN)
    (proj / "plan.toml").write_text(PLAN)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the job\n")

    cfg = tomllib.loads((REPO / "site-configs" / "local-bwrap.toml").read_text())
    cfg["container"]["image"] = str(prefix)
    cfg["container"]["mounts"] = [f"{proj}:/workspace"]
    cfg["filesystems"] = {"shared": str(proj)}
    cfg["partitions"]["debug"].update(cpus_per_node=2, memory_gb=2)  # fits a 2-core CI machine
    import tomli_w

    site = base / "site-configs" / "local-bwrap.toml"
    site.parent.mkdir()
    site.write_text(tomli_w.dumps(cfg))
    return {"base": base, "prefix": prefix, "proj": proj, "outside": outside, "site": site}


def _logs(run: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((run / "logs").glob("*")))


def _job_id(run: Path) -> str:
    return json.loads((run / "submission.json").read_text())["job_id"]


@pytest.fixture(scope="module")
def trained(bw):
    """`train launch --eval-after` on the bubblewrap site: both jobs waited for."""
    proj, run = bw["proj"], bw["proj"] / "runs" / "t"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", "configs/train.toml", "--launcher", "slurm",
                "--site", str(bw["site"]), "--run-dir", str(run), "--name", "llmctl-bwrap-train", "--eval-after",
                cwd=proj, env=quiet_env(), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    eval_run = proj / "runs" / "t-eval"
    ids = [_job_id(run), _job_id(eval_run)]
    try:
        st = wait_state(run_cli, run, timeout=300)
        assert st["state"] == "COMPLETED", (st, _logs(run))
        st = wait_state(run_cli, eval_run, timeout=300)
        assert st["state"] == "COMPLETED", (st, _logs(eval_run))
    finally:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
    return run, eval_run


@pytest.mark.slurm
def test_train_and_eval_run_in_the_sandbox(bw, trained):
    run, eval_run = trained
    script = (run / "job.sh").read_text()
    # Each rank is started through the sandbox, with the image's Python and the run folder as mounted.
    assert '"${SANDBOX[@]}" /opt/llmctl/bin/python -m llmctl.train --run-dir /workspace/runs/t' in script
    assert f"--bind {bw['proj']} /workspace" in script and f"--ro-bind {bw['prefix']} /opt/llmctl" in script
    # Checkpoints of both intervals, written from inside to the mounted run folder.
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-00000003", "step-00000006"], ckpts
    assert (run / "checkpoints" / "step-00000006" / "state.json").is_file()
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("kind") == "train"] == list(range(1, 7))
    start = next(r for r in recs if r.get("kind") == "start")
    # Two ranks; the trainer read its data through the mount (the path it saw is the sandbox's).
    assert start["world_size"] == 2 and start["data"].startswith("/workspace/"), start
    job = _job_id(run)
    assert {p.name for p in (run / "logs").glob(f"{job}_*_log.out")} >= {f"{job}_0_log.out", f"{job}_1_log.out"}
    # The eval job read the checkpoint through the mount and wrote its results there.
    eval_script = (eval_run / "job.sh").read_text()
    assert "--checkpoint /workspace/runs/t --output /workspace/runs/t/eval/final.json" in eval_script
    results = json.loads((run / "eval" / "final.json").read_text())
    assert results["results"], results


@pytest.mark.slurm
def test_preemption_signal_reaches_the_trainer_through_bwrap(bw, trained):
    """USR1 (the preemption warning) goes from the batch shell through srun to the trainer in
    its sandbox, not to bwrap (which would die of it): it checkpoints, requeues and resumes."""
    proj = bw["proj"]
    shutil.copytree(REPO / "tests" / "holdpoint", proj / "holdpoint", dirs_exist_ok=True)
    cfg = tomllib.loads(bw["site"].read_text())
    # The trainer holds after step 3 until a signal reaches it (tests/holdpoint, mounted with the project).
    cfg["env"].update(PYTHONPATH="/workspace/holdpoint", LLMCTL_TEST_HOLD_AT_STEP="3")
    import tomli_w

    site = bw["base"] / "held" / "local-bwrap.toml"
    site.parent.mkdir(exist_ok=True)
    site.write_text(tomli_w.dumps(cfg))
    run = proj / "runs" / "held"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", "configs/train.toml", "--launcher", "slurm",
                "--site", str(site), "--run-dir", str(run), "--name", "llmctl-bwrap-held", cwd=proj,
                env=quiet_env(), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    job = _job_id(run)
    try:
        deadline = time.monotonic() + 180
        while not any("llmctl-test: held after step 3" in p.read_text(errors="replace")
                      for p in (run / "logs").glob("*")):
            assert time.monotonic() < deadline, _logs(run)
            time.sleep(0.3)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
        st = wait_state(run_cli, run, timeout=240)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    assert st["state"] == "COMPLETED", (st, _logs(run))
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in recs if r.get("kind") == "start"]
    ends = [r for r in recs if r.get("kind") == "end"]
    assert [e["reason"] for e in ends] == ["preempted", "finished"], (ends, _logs(run))
    # It resumed where it checkpointed (the step it was in when the signal came), in the job's next run.
    assert starts[1]["step"] == ends[0]["step"] >= 3 and starts[1]["restart"] >= 1, (starts, ends)
    assert [r["step"] for r in recs if r.get("kind") == "train"] == list(range(1, 7))


@pytest.mark.slurm
def test_only_the_mounts_exist_inside(bw, trained):
    """The job's own SANDBOX (from its job.sh), run by srun on the cluster: no host path
    outside the mounts, the image read-only, the environment passed through."""
    run, _ = trained
    define = subprocess.run(["sed", "-n", "/^SANDBOX=(/,/^)/p", str(run / "job.sh")], capture_output=True,
                            text=True, check=True).stdout
    cmd = (f'{define}\n"${{SANDBOX[@]}}" /opt/llmctl/bin/python -c {shlex.quote(PROBE)} '
           f'{shlex.quote(str(bw["outside"] / "secret.txt"))} {shlex.quote(str(bw["proj"]))} {shlex.quote(str(REPO))}')
    r = subprocess.run(["srun", "--ntasks=1", "--cpus-per-task=1", "--mem=500M", "--time=5", "-J", "llmctl-bwrap-probe",
                        "bash", "-c", cmd], capture_output=True, text=True, timeout=120,
                       env=quiet_env(LLMCTL_PROBE_ENV="passed", LLMCTL_RUN_DIR="/workspace/runs/t"))
    assert r.returncode == 0, r.stdout + r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["root"] == ["bin", "dev", "etc", "lib", "lib64", "opt", "proc", "run", "tmp", "usr", "workspace"], seen
    assert set(seen["etc"]) <= {"hosts", "resolv.conf", "nsswitch.conf", "passwd", "group", "slurm"}, seen
    assert seen["run"] == ["munge"], seen  # SLURM's client side (the trainer requeues its own job)
    assert seen["tmp"] == []
    assert not seen["outside"] and not seen["project_host_path"] and not seen["repo"] and not seen["home"], seen
    assert seen["cwd"] == "/workspace/runs/t" and seen["prefix"] == "/opt/llmctl", seen
    assert seen["workspace_writable"] and not seen["image_writable"], seen
    assert seen["env"] == "passed" and seen["run_dir"] == "/workspace/runs/t", seen
    assert bw["outside"].joinpath("secret.txt").is_file()  # it is there, on the host


@pytest.mark.slurm
def test_persistent_server_answers_on_localhost_and_stops_when_cancelled(bw, trained):
    run, _ = trained
    proj = bw["proj"]
    r = run_cli("export", "--checkpoint", str(run), "--out", str(proj / "art"), "--dtype", "fp32", cwd=proj,
                env=quiet_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = proj / "runs" / "srv"
    r = run_cli("serve", "launch", "--artifact", str(proj / "art"), "--port", str(port), "--launcher", "slurm",
                "--site", str(bw["site"]), "--run-dir", str(srv), "--name", "llmctl-bwrap-serve", cwd=proj,
                env=quiet_env(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--artifact /workspace/art" in (srv / "job.sh").read_text()
    job = _job_id(srv)
    endpoint = srv / "endpoint.json"
    try:
        deadline = time.monotonic() + 180
        ok = False
        while time.monotonic() < deadline and not ok:
            try:
                ok = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert ok, _logs(srv)
        assert endpoint.is_file() and json.loads(endpoint.read_text())["port"] == port
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "def ", "max_tokens": 4},
                           timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1, reply.text
    finally:
        c = run_cli("job", "cancel", str(srv), timeout=180)
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    assert c.returncode == 0, c.stdout + c.stderr
    # SIGTERM reached the server inside the sandbox: it shut down and removed its endpoint file.
    deadline = time.monotonic() + 60
    while endpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not endpoint.exists(), _logs(srv)


@pytest.mark.slurm
def test_a_path_outside_the_mounts_is_refused_before_anything_is_written(bw):
    proj, outside, site = bw["proj"], bw["outside"], str(bw["site"])
    mounts = f"site 'local-bwrap' mounts: {proj}:/workspace"
    run = outside / "run"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", "configs/train.toml", "--launcher", "slurm",
                "--site", site, "--run-dir", str(run), cwd=proj, env=quiet_env())
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"run folder {run} is not visible inside the job: {mounts}" in r.stderr, r.stderr
    assert not run.exists()
    # A model config outside the mounts (the run folder is fine): refused, named, nothing written.
    shutil.copy(proj / "configs" / "models" / "tiny.json", outside / "tiny.json")
    cfg = outside / "train.toml"
    cfg.write_text(TRAIN.replace('config_file = "configs/models/tiny.json"', f'config_file = "{outside}/tiny.json"')
                   .replace('config_file = "configs/data/tiny.toml"', f'config_file = "{proj}/configs/data/tiny.toml"'))
    run = proj / "runs" / "refused"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", str(cfg), "--launcher", "slurm",
                "--site", site, "--run-dir", str(run), cwd=proj, env=quiet_env())
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{outside}/tiny.json is not visible inside the job: {mounts}" in r.stderr, r.stderr
    assert not run.exists()


@pytest.mark.slurm
def test_a_local_site_runs_its_ranks_in_the_sandbox_too(bw):
    """The same container on a site without a scheduler: `--launcher local`, one torchrun (in
    the sandbox) starting both ranks."""
    cfg = tomllib.loads(bw["site"].read_text())
    cfg.update(name="local-bwrap-here", scheduler="local", launcher="torchrun", default_partition="local")
    cfg["partitions"] = {"local": cfg["partitions"]["debug"]}
    import tomli_w

    site = bw["base"] / "site-configs" / "local-bwrap-here.toml"
    site.write_text(tomli_w.dumps(cfg))
    proj, run = bw["proj"], bw["proj"] / "runs" / "local"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", "configs/train.toml", "--launcher", "local",
                "--site", str(site), "--run-dir", str(run), cwd=proj, env=quiet_env(), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"${SANDBOX[@]}" /opt/llmctl/bin/python -m torch.distributed.run --standalone' in (run / "job.sh").read_text()
    st = wait_state(run_cli, run, timeout=240)
    assert st["state"] == "COMPLETED", (st, _logs(run))
    assert (run / "checkpoints" / "step-00000006" / "state.json").is_file()
    start = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line).get("kind") == "start")
    assert start["world_size"] == 2 and start["data"].startswith("/workspace/"), start


@pytest.mark.slurm
def test_a_missing_image_is_refused_at_submit(bw):
    cfg = tomllib.loads(bw["site"].read_text())
    cfg["container"]["image"] = str(bw["base"] / "no-such-prefix")
    import tomli_w

    site = bw["base"] / "noimage" / "local-bwrap.toml"
    site.parent.mkdir(exist_ok=True)
    site.write_text(tomli_w.dumps(cfg))
    run = bw["proj"] / "runs" / "noimage"
    r = run_cli("train", "launch", "--plan", "plan.toml", "--config", "configs/train.toml", "--launcher", "slurm",
                "--site", str(site), "--run-dir", str(run), cwd=bw["proj"], env=quiet_env())
    assert r.returncode == 2 and f"container.image {bw['base'] / 'no-such-prefix'}: not found" in r.stderr, r.stderr
    assert not (run / "submission.json").exists()  # nothing queued
