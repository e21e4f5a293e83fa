"""Serving, evaluation and probing on partition `multi` of the local cluster
(scripts/slurm-multinode.sh: node1 and node2 are slurmds in their own network and UTS
namespaces, reachable from here through the bridge at 10.77.0.1x).

- `serve launch --nodes 2 --gpus-per-node 1` puts a server's MPI ranks on node1 and node2
  (mpirun over the allocation's host list), in tp and in dp mode: /health names each rank's
  host, greedy answers equal one local rank's, and the worker killed on node2 turns /health
  503 naming it while rank 0 on node1 keeps answering HTTP.
- a one-process serve job and an eval job land on a compute node, never on the machine that
  submitted them, and answer over HTTP / write their results.
- `hw probe --all-nodes` inside a 2-node allocation probes both nodes and merges them.

Skipped where the partition is absent; LLMCTL_REQUIRE_SLURM=1 makes that a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import servekit as K  # noqa: E402
from test_multinode import cli_env, logs, require_multinode, site_copy  # noqa: E402

httpx = pytest.importorskip("httpx")
pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.slow]

MPIEXEC = Path(sys.executable).parent / "mpiexec"  # pip MPICH: hydra bootstraps through SLURM
PROMPTS = ["def f(x):", "import os\n", "class A:\n    pass", "x = [1, 2, 3]"]
NODES = {"node1", "node2"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    require_multinode()
    root = tmp_path_factory.mktemp("mnjobs")
    K.tiny_artifact(root / "art")
    return root


def answers(url: str) -> list[str]:
    out = []
    for p in PROMPTS:
        r = httpx.post(url + "/v1/completions", timeout=60,
                       json={"prompt": p, "max_tokens": 12, "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        out.append(r.json()["choices"][0]["text"])
    return out


@pytest.fixture(scope="module")
def one_rank_answers(root):
    """Greedy answers of one local rank: what every layout below must give."""
    with K.Server(root / "art" / "tiny") as one:
        return answers(one.url)


def launch_server(root: Path, name: str, *args: str, env: dict | None = None) -> Path:
    site = site_copy(root, f"srv{name}", env)
    run = root / "runs" / name
    port = K.free_port()  # free here; the nodes have their own port spaces, so any port is free there
    r = run_cli("serve", "launch", "--artifact", str(root / "art" / "tiny"), "--launcher", "slurm",
                "--site", str(site), "--port", str(port), "--run-dir", str(run), "--name", f"llmctl-mn-{name}",
                "--set", f"mpirun={MPIEXEC}", *args, cwd=root, env=cli_env(root))
    assert r.returncode == 0, r.stderr
    return run


def endpoint(run: Path, timeout: float = 180) -> str:
    """The server's URL from RUN/endpoint.json (host = the compute node's name) once /health answers 200."""
    ep = run / "endpoint.json"
    deadline = time.monotonic() + timeout
    last = "no endpoint.json"
    while time.monotonic() < deadline:
        if ep.is_file():
            e = json.loads(ep.read_text())
            url = f"http://{e['host']}:{e['port']}"
            try:
                h = httpx.get(url + "/health", timeout=2)
                if h.status_code == 200:
                    return url
                last = f"/health {h.status_code}: {h.text}"
            except httpx.HTTPError as err:
                last = f"/health: {err!r}"
        state = json.loads(run_cli("job", "status", str(run), "--json", env=cli_env(run.parents[1])).stdout)
        assert state["state"] in ("PENDING", "CONFIGURING", "RUNNING"), (state, logs(run))
        time.sleep(0.5)
    raise AssertionError(f"the server never answered ({last}): {logs(run)}")


def cancel(run: Path) -> None:
    job = json.loads((run / "submission.json").read_text())["job_id"]
    subprocess.run(["scancel", job], capture_output=True, timeout=30)


@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["tp", "dp"])
def test_mpi_server_spans_two_nodes_and_a_rank_lost_on_node2_turns_health_503(root, one_rank_answers, mode):
    needs("mpi", MPIEXEC.exists(), "pip install mpi4py mpich")
    run = launch_server(root, f"mpi-{mode}", "--nodes", "2", "--gpus-per-node", "1", "--mpi-mode", mode,
                        env={"LLMCTL_MPI_TIMEOUT_S": "15"})  # a busy 2-core machine: no false alarms
    script = (run / "job.sh").read_text()
    assert "#SBATCH --nodes=2" in script and "-disable-auto-cleanup -np 2 -machinefile" in script
    t0 = time.monotonic()
    try:
        url = endpoint(run)
        health = httpx.get(url + "/health", timeout=5).json()
        # each rank says where it runs: rank 0 (HTTP) on the first node, rank 1 on the other
        assert health["ranks"] == 2 and health["rank_hosts"] == ["node1", "node2"], health
        assert url.startswith("http://node1:")
        text = logs(run)
        assert "llmctl serve: rank 0 of 2 on node1" in text and "llmctl serve: rank 1 of 2 on node2" in text, text
        assert answers(url) == one_rank_answers
        if mode == "dp":
            counts = httpx.get(url + "/metrics", timeout=5).text
            assert 'llmctl_replica_requests_total{rank="1"}' in counts, counts

        # node2 loses its rank (the worker process, killed as an OOM killer would)
        os.kill(health["rank_pids"][1], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (h := httpx.get(url + "/health", timeout=5)).status_code != 503:
            assert time.monotonic() < deadline, (h.json(), logs(run))
            time.sleep(0.5)
        body = h.json()
        assert body["status"] == "unhealthy" and "rank" in body["error"], body
        assert body["rank_hosts"] == ["node1", "node2"]
        r = httpx.post(url + "/v1/completions", json={"prompt": "y", "max_tokens": 2}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert "llmctl_healthy 0" in httpx.get(url + "/metrics", timeout=5).text  # rank 0 still serves HTTP
    finally:
        cancel(run)
    print(f"{mode}: 2-node MPI server up, answered, lost rank 1, said so: {time.monotonic() - t0:.0f} s")
    # hydra's SIGUSR1 names no rank: rank 0 names the one that went quiet (dp) or the only rank
    # on another host (tp), with its host
    assert "rank 1 on node2" in body["error"], body


def test_serve_job_runs_on_a_compute_node_and_answers_over_http(root, one_rank_answers):
    run = launch_server(root, "one")
    try:
        url = endpoint(run)
        host = url.split("//")[1].split(":")[0]
        assert host in NODES and host != socket.gethostname(), url
        assert answers(url) == one_rank_answers
        assert f"on {host}, restart 0" in logs(run)  # the batch script's first line: its host
    finally:
        cancel(run)


@pytest.fixture(scope="module")
def eval_checkpoint(root):
    """A one-step training checkpoint of the tiny model (trained here, in one process)."""
    from trainkit import make_project, make_run, prepare_data, run_train

    project = make_project(root / "proj")
    prepare_data(project)
    run = make_run(project, "short", steps=2, interval=2, eval_interval=2)
    r = run_train(run)
    assert r.returncode == 0, r.stderr[-3000:]
    return project, run


def test_eval_job_runs_on_a_compute_node_and_writes_its_results(root, eval_checkpoint):
    from jobsupport import wait_state

    project, ckpt = eval_checkpoint
    site = site_copy(root, "mneval")
    # --submit: one eval job per checkpoint not yet evaluated, on the site's partition (multi)
    r = run_cli("eval", "watch", "--run-dir", str(ckpt), "--submit", "--launcher", "slurm", "--site", str(site),
                "--tasks", "arithmetic", cwd=project, env=cli_env(root), timeout=120)
    assert r.returncode == 0, r.stderr
    jobs = sorted(p for p in (ckpt / "eval" / "jobs").iterdir() if p.is_dir())
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert "#SBATCH --partition=multi" in (job / "job.sh").read_text()
    try:
        st = wait_state(lambda *a, **k: run_cli(*a, cwd=project, env=cli_env(root), **k), job, timeout=300)
    finally:
        cancel(job)
    assert st["state"] == "COMPLETED", (st, logs(job))
    ran_on = [ln.split(" on ")[1].split(",")[0] for ln in logs(job).splitlines() if ln.startswith("llmctl: job ")]
    assert ran_on and set(ran_on) <= NODES and socket.gethostname() not in ran_on, logs(job)
    results = json.loads(next((ckpt / "eval" / "results").glob("*.json")).read_text())
    assert "arithmetic" in results["results"], results


def test_hw_probe_all_nodes_inside_a_two_node_allocation_merges_node1_and_node2(root):
    folder = root / "probe"
    folder.mkdir()
    out = folder / "all.json"
    cmd = f"{sys.executable} -m llmctl hw probe --all-nodes --emit {out}"
    p = subprocess.run(["sbatch", "--wait", "-p", "multi", "-N", "2", "--ntasks-per-node=1", "--mem=1G",
                        "--time=5", "-J", "llmctl-mn-probe", f"--output={folder}/job.out", f"--chdir={folder}",
                        "--wrap", cmd], capture_output=True, text=True, timeout=300)
    text = (folder / "job.out").read_text() if (folder / "job.out").exists() else ""
    assert p.returncode == 0, (p.stderr, text)
    data = json.loads(out.read_text())
    assert data["cluster"]["nodes"] == 2 and data["cluster"]["hostnames"] == ["node1", "node2"], data["cluster"]
    assert data["node"]["hostname"] in NODES
    assert sorted(x.name for x in folder.iterdir()) == ["all.json", "job.out"]  # per-node files cleaned up
