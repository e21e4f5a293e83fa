"""Pre-flight at submit: a job that would fail in the queue is not queued. Every problem
is one line; exit 2; no submission is recorded."""

from __future__ import annotations

import shutil

from conftest import run_cli

PLAN = '[inputs]\nmodel = "m.json"\nnodes = 1\ngpus_per_node = 1\nglobal_batch = 1\n\n[parallelism]\ndp = 1\n'
DATA = '[[sources]]\ntype = "stdlib"\n\n[output]\ndir = "data/tokens"\n'


def env(tmp_path):
    return {"LLMCTL_STATE_DIR": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def test_unprepared_data_is_refused_before_submission(tmp_path):
    (tmp_path / "plan.toml").write_text(PLAN)
    (tmp_path / "data.toml").write_text(DATA)
    r = run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--data", str(tmp_path / "data.toml"),
                "--run-dir", str(tmp_path / "run"), cwd=tmp_path, env=env(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "data.config_file" in ln and "  from flag" not in ln)
    assert "holds no prepared data" in line and "llmctl data prepare" in line
    assert not (tmp_path / "run" / "submission.json").exists()
    assert not (tmp_path / "state" / "jobs.jsonl").exists()


def test_prepared_data_passes(tmp_path):
    from llmctl.jobs.preflight import _prepared

    (tmp_path / "data.toml").write_text(DATA)
    (tmp_path / "data" / "tokens").mkdir(parents=True)
    (tmp_path / "data" / "tokens" / "meta.json").write_text("{}")
    assert _prepared(str(tmp_path / "data.toml")) == []


def test_missing_artifact_is_refused_at_submit(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text("{}")
    r = run_cli("serve", "launch", "--artifact", str(art), "--run-dir", str(tmp_path / "run"), "--dry-run",
                cwd=tmp_path, env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    shutil.rmtree(art)  # gone between review and submission
    r = run_cli("job", "submit", str(tmp_path / "run"), cwd=tmp_path, env=env(tmp_path))
    assert r.returncode == 2 and f"--artifact {art}: not found" in r.stderr, r.stderr
    assert not (tmp_path / "run" / "submission.json").exists()


def test_missing_checkpoint_and_suite_are_each_one_line(tmp_path):
    from llmctl.jobs.launch import prepare_eval_job
    from llmctl.jobs.preflight import problems

    run, dry = prepare_eval_job(checkpoint=str(tmp_path / "ckpt"), suite=str(tmp_path / "suite.toml"),
                                run_dir=str(tmp_path / "run"))
    found = problems(run, dry.spec)
    assert found == [f"--checkpoint {tmp_path / 'ckpt'}: not found", f"--suite {tmp_path / 'suite.toml'}: not found"]


def test_partition_the_site_no_longer_has_is_refused(tmp_path):
    site = tmp_path / "s.toml"
    site.write_text('name = "s"\nscheduler = "slurm"\ndefault_partition = "a"\ngpu_request = "none"\n'
                    'python = "python3"\n[partitions.a]\nmemory_gb = 2\n[partitions.b]\nmemory_gb = 2\n')
    (tmp_path / "plan.toml").write_text(PLAN)
    r = run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--launcher", "slurm", "--site", str(site),
                "--partition", "b", "--run-dir", str(tmp_path / "run"), "--dry-run", cwd=tmp_path, env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    site.write_text(site.read_text().replace("[partitions.b]\nmemory_gb = 2\n", ""))
    from llmctl.jobs.preflight import problems
    from llmctl.jobs.rundir import RunDir

    run = RunDir(tmp_path / "run")
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        found = problems(run, run.load_spec())
    finally:
        os.chdir(cwd)
    assert found and found[0].startswith("partition 'b' is not in site 's'")
