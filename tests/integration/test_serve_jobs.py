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
    from llmctl.jobs.launch import prepare_serve_job, submit_run

    art = K.tiny_artifact(tmp_path / "art")
    port = K.free_port()
    run, _ = prepare_serve_job(kind="serve-persistent", artifact=str(art), port=port, launcher="local",
                               run_dir=str(tmp_path / "srv"), name="srv")
    assert f"--port {port}" in run.script("local").read_text()
    submit_run(run.path)
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
