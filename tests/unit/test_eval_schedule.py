"""`llmctl eval schedule`: cron expressions, scrontab/crontab entries, bad intervals."""

from __future__ import annotations

import shlex

import pytest

from llmctl.errors import LlmctlError
from llmctl.eval import schedule as S


@pytest.mark.parametrize("every,expr", [("15m", "*/15 * * * *"), ("1m", "* * * * *"), ("60m", "0 * * * *"),
                                         ("1h", "0 * * * *"), ("6h", "0 */6 * * *"), ("1d", "0 0 * * *")])
def test_cron_expression(every, expr):
    assert S.cron_expression(every) == expr


@pytest.mark.parametrize("every", ["7m", "5h", "2d", "hourly", "", "0m"])
def test_bad_intervals(every):
    with pytest.raises(LlmctlError):
        S.cron_expression(every)


def test_scrontab_entry_runs_the_watcher_as_a_job(cli, tmp_path):
    run = tmp_path / "run dir"
    r = cli("eval", "schedule", "--every", "2h", "--run-dir", str(run), "--suite", "s.toml",
            "--launcher", "slurm", "--partition", "debug", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    scron = [x for x in lines if x.startswith("#SCRON ")]
    assert "#SCRON --partition=debug" in scron and "#SCRON --time=01:00:00" in scron
    assert any(x.startswith("#SCRON --output=") and str(run) in shlex.split(x)[1] for x in scron)
    cron = [x for x in lines if x and not x.startswith("#")]
    assert len(cron) == 1 and cron[0].startswith("0 */2 * * * ")
    argv = shlex.split(cron[0].split(None, 5)[5])
    assert argv[1:5] == ["-m", "llmctl", "eval", "watch"]
    assert argv[argv.index("--run-dir") + 1] == str(run)  # absolute, quoted: cron has no cwd
    assert argv[argv.index("--suite") + 1] == str(tmp_path / "s.toml")
    assert (run / "eval" / "logs").is_dir()  # SLURM cannot create the --output folder itself


def test_crontab_line_and_bad_every_exit_2(cli, tmp_path):
    r = cli("eval", "schedule", "--every", "30m", "--run-dir", "r", cwd=tmp_path)
    assert r.returncode == 0 and "*/30 * * * * " in r.stdout and "watch.log" in r.stdout
    r = cli("eval", "schedule", "--every", "7m", "--run-dir", "r", cwd=tmp_path)
    assert r.returncode == 2 and "minutes must divide 60" in r.stderr and "Traceback" not in r.stderr


def test_schedule_and_bad_task_input_import_no_torch(tmp_path):
    """Scheduling (a login-node command) and rejecting bad input never pay for torch."""
    import json
    import subprocess
    import sys

    probe = ("import json, sys\nfrom llmctl.cli import main\n"
             "rc = main(sys.argv[1:])\n"
             "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n")
    for argv in (["eval", "schedule", "--every", "1h", "--run-dir", "r", "--launcher", "slurm"],
                 ["eval", "run", "--checkpoint", "nope", "--tasks", "nope"]):
        r = subprocess.run([sys.executable, "-c", probe, *argv], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
        last = json.loads(r.stdout.strip().splitlines()[-1])
        assert last["torch"] is False, argv


def test_slurm_chain_script_quotes_paths_and_requeues_itself(cli, tmp_path):
    run = tmp_path / "r $(touch pwned); x"
    r = cli("eval", "schedule", "--every", "90s", "--run-dir", str(run), "--launcher", "slurm-chain", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "#!/bin/bash" and "#SBATCH --dependency=singleton" in lines
    body = [x for x in lines if not x.startswith("#")]
    requeue = next(x for x in body if x.startswith("sbatch "))
    argv = shlex.split(requeue.split("||")[0])
    assert argv[2] == "--begin=now+90" and argv[3] == str(run / "eval" / "schedule-slurm.sh")
    stop = next(x for x in body if x.startswith("if [ -e "))
    assert shlex.split(stop)[3] == str(run / "eval" / "schedule.stop")
    # the script parses as bash, and running it up to the stop check runs nothing injected
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "schedule.stop").touch()
    script = tmp_path / "s.sh"
    script.write_text(r.stdout)
    import subprocess

    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "chain ends" in done.stdout
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("every,seconds", [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400)])
def test_interval_seconds(every, seconds):
    assert S.interval_seconds(every) == seconds


def test_chain_rejects_bad_interval(cli, tmp_path):
    r = cli("eval", "schedule", "--every", "0s", "--run-dir", "r", "--launcher", "slurm-chain", cwd=tmp_path)
    assert r.returncode == 2 and "--every" in r.stderr and "Traceback" not in r.stderr
