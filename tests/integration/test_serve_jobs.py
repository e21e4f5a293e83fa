"""A persistent server as a job (local launcher): it writes its host and port into
the run folder, answers there, and a cancel stops it cleanly."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

httpx = pytest.importorskip("httpx")


def test_persistent_server_job_writes_its_endpoint(tmp_path):
    """`llmctl serve launch` (persistent, local launcher): rendered, submitted, discoverable."""
    from llmctl.jobs.rundir import RunDir

    art = K.tiny_artifact(tmp_path / "art")
    port = K.free_port()
    r = run_cli("serve", "launch", "--artifact", str(art), "--port", str(port), "--launcher", "local",
                "--run-dir", str(tmp_path / "srv"), "--name", "srv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("submitted local job ") and "endpoint.json" in r.stderr
    run = RunDir(tmp_path / "srv")
    assert f"--port {port}" in run.script("local").read_text()
    endpoint = run.endpoint_file
    try:
        deadline = time.monotonic() + 60
        while not endpoint.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert endpoint.is_file(), (run.path / "logs" / "job.out").read_text()
        ep = json.loads(endpoint.read_text())
        assert ep["port"] == port
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "a", "max_tokens": 3},
                       timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        c = run_cli("job", "cancel", str(run.path))
    assert c.returncode == 0, c.stderr
    for _ in range(100):
        if not endpoint.exists():
            break
        time.sleep(0.1)
    assert not endpoint.exists()  # removed at a clean shutdown


def test_batch_job_through_the_cli_answers_the_file(tmp_path):
    """`llmctl serve launch --kind batch`: the job answers every request of the input file."""
    art = K.tiny_artifact(tmp_path / "art")
    inp, out = tmp_path / "requests.jsonl", tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    inp.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                       "body": {"prompt": "a" * (i + 1), "max_tokens": 4}}) + "\n"
                           for i in range(5)))
    # relative paths: the job runs from its own folder, so the CLI must make them absolute
    r = run_cli("serve", "launch", "--kind", "batch", "--artifact", str(art.relative_to(tmp_path)),
                "--input", "requests.jsonl",
                "--output", "out/results.jsonl", "--launcher", "local", "--run-dir", "b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = run_cli("job", "status", str(tmp_path / "b"), "--json", cwd=tmp_path)
        if st.returncode == 0 and json.loads(st.stdout).get("state") in ("COMPLETED", "FAILED"):
            break
        time.sleep(0.5)
    assert json.loads(st.stdout)["state"] == "COMPLETED", (tmp_path / "b" / "logs" / "job.out").read_text()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["custom_id"] for x in rows) == [f"r{i}" for i in range(5)]
    assert all(x["error"] is None and x["response"]["status_code"] == 200 for x in rows)


@pytest.mark.parametrize("args,problem", [
    (["--kind", "batch"], "needs --input and --output"),
    (["--input", "x.jsonl", "--output", "y.jsonl"], "are for --kind batch"),
    (["--kind", "batch", "--input", "missing.jsonl", "--output", "y.jsonl"], "missing.jsonl: file not found"),
])
def test_serve_launch_bad_input_exits_2(tmp_path, args, problem):
    art = K.tiny_artifact(tmp_path / "art")
    r = run_cli("serve", "launch", "--artifact", str(art), "--dry-run", *args, cwd=tmp_path)
    assert r.returncode == 2 and problem in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written
    r = run_cli("serve", "launch", "--artifact", str(tmp_path / "nope"), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "artifact folder not found" in r.stderr
    r = run_cli("serve", "launch", "--artifact", str(tmp_path), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "no config.json" in r.stderr
