"""`job list` / `job status`: the current user's jobs by default (`--all`: everyone's in a
shared index), and a job name that holds a newline or an escape sequence never breaks the
table or the terminal."""

from __future__ import annotations

import getpass
import json

from conftest import run_cli


def index(tmp_path, entries):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "jobs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return {"LLMCTL_STATE_DIR": str(state)}


def entry(tmp_path, job_id, name, user):
    run = tmp_path / f"run{job_id}"
    run.mkdir(exist_ok=True)
    e = {"run_dir": str(run), "backend": "slurm", "job_id": job_id, "name": name,
         "submitted": "2026-12-01T10:00:00+0000"}
    if user is not None:
        e["user"] = user
    return e


def test_list_shows_only_my_jobs_unless_all(tmp_path):
    me = getpass.getuser()
    env = index(tmp_path, [entry(tmp_path, "11", "mine", me), entry(tmp_path, "12", "theirs", "someone-else"),
                           entry(tmp_path, "13", "old-entry", None)])
    r = run_cli("job", "list", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [row["job_id"] for row in json.loads(r.stdout)] == ["11", "13"]
    r = run_cli("job", "list", "--all", "--json", env=env)
    rows = json.loads(r.stdout)
    assert [(row["job_id"], row["user"]) for row in rows] == [("11", me), ("12", "someone-else"), ("13", me)]
    table = run_cli("job", "list", "--all", env=env).stdout
    assert "USER" in table.splitlines()[0] and "someone-else" in table


def test_hostile_job_name_stays_on_one_table_row(tmp_path):
    me = getpass.getuser()
    env = index(tmp_path, [entry(tmp_path, "21", "evil\nFAKE 99 slurm ok\x1b[2J\u202edone", me),
                           entry(tmp_path, "22", "plain", me)])
    r = run_cli("job", "list", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, lines  # header + one row per job
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout
    assert "evil\\nFAKE 99 slurm ok\\x1b[2J\\u202edone" in lines[1]
    # JSON keeps the name as it is (escaped by JSON itself).
    rows = json.loads(run_cli("job", "list", "--json", env=env).stdout)
    assert rows[0]["name"] == "evil\nFAKE 99 slurm ok\x1b[2J\u202edone"


def test_submission_records_the_user(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCTL_STATE_DIR", str(tmp_path / "st"))
    from llmctl.schedulers.base import read_index, record_submission

    record_submission(tmp_path, "local", "123", "n")
    assert read_index()[0]["user"] == getpass.getuser()
