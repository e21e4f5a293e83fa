"""`llmctl serve batch`: OpenAI batch files in and out, resumable. Locally (a run cut
short, its output torn mid-line) and as a real job on the local SLURM cluster that
is killed halfway and completes on resubmission without redoing finished requests.
A request that fails in the engine gets an error line and the others still run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs, run_cli

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).parent))
import servekit as K  # noqa: E402
from jobsupport import slurm_up, wait_state, write_site  # noqa: E402

pytest.importorskip("torch")


def write_requests(path: Path, n: int, step: int = 1, hold: int | None = None) -> list[str]:
    """`n` requests; with `hold`, that one holds the engine after its first token (test
    hooks: only where LLMCTL_SERVE_TEST_HOOKS=1, ignored elsewhere)."""
    ids = []
    with open(path, "w") as f:
        for i in range(n):
            cid = f"req-{i:03d}"
            ids.append(cid)
            if i % 2:
                url, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": f"hi {i}"}]}
            else:
                url, body = "/v1/completions", {"prompt": f"def f{i}(x):"}
            body.update(max_tokens=step * (i + 1), temperature=0, ignore_eos=True)
            if i == hold:
                body["llmctl_test"] = "hold"
            f.write(json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body}) + "\n")
    return ids


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


def test_batch_answers_and_resumes(tmp_path, artifact):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_requests(inp, 12)
    with open(inp, "a") as f:  # a bad request gets an error line, the rest still run
        f.write(json.dumps({"custom_id": "bad", "url": "/v1/completions", "body": {"prompt": 3}}) + "\n")
    r = run_cli("serve", "batch", "--artifact", str(artifact), "--input", str(inp), "--output", str(out))
    assert r.returncode == 0, r.stderr
    first = {x["custom_id"]: x for x in K.jsonl(out)}
    assert set(first) == {*ids, "bad"}
    assert first["bad"]["response"] is None and "prompt" in first["bad"]["error"]["message"]
    ok = first["req-003"]["response"]
    assert ok["status_code"] == 200 and ok["body"]["object"] == "chat.completion"
    assert ok["body"]["usage"]["completion_tokens"] == 4

    # a run killed after 5 answers, mid-way through writing the 6th line
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:17])
    kept = {json.loads(x)["custom_id"] for x in lines[:5]}
    r = run_cli("serve", "batch", "--artifact", str(artifact), "--input", str(inp), "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "5 already done" in r.stdout
    again = K.jsonl(out)
    assert sorted(x["custom_id"] for x in again) == sorted(first)  # each exactly once
    for x in again:
        if x["custom_id"] not in kept and x["response"]:  # redone: same greedy answer
            old = first[x["custom_id"]]["response"]["body"]["choices"][0]
            assert x["response"]["body"]["choices"][0] == old


def test_a_request_failing_in_the_engine_gets_an_error_line(tmp_path, artifact):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_requests(inp, 6)
    with open(inp, "a") as f:  # its step raises (test hooks) after 2 tokens, among the others
        f.write(json.dumps({"custom_id": "boom", "url": "/v1/completions", "body": {
            "prompt": "x", "max_tokens": 20, "ignore_eos": True, "llmctl_test": "fail-step"}}) + "\n")
    r = run_cli("serve", "batch", "--artifact", str(artifact), "--input", str(inp), "--output", str(out),
                env={"LLMCTL_SERVE_TEST_HOOKS": "1"})
    assert r.returncode == 0, r.stderr
    rows = {x["custom_id"]: x for x in K.jsonl(out)}
    assert set(rows) == {*ids, "boom"} and "1 errors" in r.stdout
    assert rows["boom"]["response"] is None and "injected fault" in rows["boom"]["error"]["message"]
    assert all(rows[i]["response"]["status_code"] == 200 for i in ids)


def test_bad_batch_file_is_one_clean_error(tmp_path, artifact):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"custom_id": "a", "url": "/v1/embeddings", "body": {}}\n')
    r = run_cli("serve", "batch", "--artifact", str(artifact), "--input", str(inp),
                "--output", str(tmp_path / "o.jsonl"))
    assert r.returncode == 2 and f"{inp}:1: url:" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slurm
def test_slurm_batch_killed_halfway_completes_on_resubmission(tmp_path, artifact):
    needs("slurm", slurm_up(), "no running SLURM cluster (bash scripts/slurm-local.sh up)")
    from llmctl.jobs.launch import prepare_serve_job, submit_run

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    # req-020 holds the first job's engine for good (test hooks on in its site only): the
    # kill always lands halfway, however fast the machine answers the others.
    ids = write_requests(inp, 40, step=5, hold=20)
    env = {"TOKENIZERS_PARALLELISM": "false"}
    held = write_site(tmp_path, name="testslurm-held", env={**env, "LLMCTL_SERVE_TEST_HOOKS": "1"})
    site = write_site(tmp_path, env=env)
    cfg = tmp_path / "serve.toml"
    cfg.write_text("max_batch_tokens = 4\n")  # a few tokens a step: answers trickle out

    def submit(name, site):
        run, _ = prepare_serve_job(kind="serve-batch", artifact=str(artifact), input_path=str(inp),
                                   output_path=str(out), config_path=str(cfg), launcher="slurm",
                                   site=str(site), run_dir=str(tmp_path / name), name=f"llmctl-{name}")
        _, job = submit_run(run.path)
        return run.path, job

    run1, job1 = submit("batch1", held)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if out.is_file() and out.read_text().count("\n") >= 5:
                break
            time.sleep(0.05)
        subprocess.run(["scancel", "--signal=KILL", "--full", job1], check=True, timeout=30)
        wait_state(run_cli, run1, timeout=60)
    finally:
        subprocess.run(["scancel", job1], capture_output=True, timeout=30)
    done_first = {json.loads(x)["custom_id"] for x in out.read_text().splitlines() if x.endswith("}")}
    assert 5 <= len(done_first) < 40 and "req-020" not in done_first

    run2, job2 = submit("batch2", site)
    try:
        st = wait_state(run_cli, run2, timeout=180)
    finally:
        subprocess.run(["scancel", job2], capture_output=True, timeout=30)
    logs = "\n".join(p.read_text(errors="replace") for p in (run2 / "logs").glob("*"))
    assert st["state"] == "COMPLETED", logs[-3000:]
    final = K.jsonl(out)
    assert sorted(x["custom_id"] for x in final) == ids  # all, each exactly once
    assert f"{len(done_first)} already done" in logs or f"{len(done_first) + 0} already done" in logs
