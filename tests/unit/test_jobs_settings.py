"""Per-user settings without editing the site-config: flags, ./llmctl.toml (project) and
~/.config/llmctl/user.toml (XDG_CONFIG_HOME honoured). Precedence: flag > project >
user > site; --dry-run says where each value came from; every value is quoted."""

from __future__ import annotations

import pytest

from conftest import run_cli
from jobsites import see_tmp

PLAN = '[inputs]\nmodel = "m.json"\nnodes = 1\ngpus_per_node = 1\nglobal_batch = 1\n\n[parallelism]\ndp = 1\n'


def launch(tmp_path, *args, site="slurm-a100-ib", launcher="slurm", env=None):
    see_tmp(tmp_path, site)
    (tmp_path / "plan.toml").write_text(PLAN)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    full_env = {"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **(env or {})}
    return run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--launcher", launcher,
                   "--site", site, "--run-dir", str(tmp_path / "run"), "--dry-run", *args,
                   cwd=tmp_path, env=full_env)


def user_toml(tmp_path, text):
    p = tmp_path / "xdg" / "llmctl" / "user.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def directives(r):
    return [ln for ln in r.stdout.splitlines() if ln.startswith("#SBATCH") or ln.startswith("#PBS")]


def test_site_values_without_user_settings(tmp_path):
    r = launch(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --account=llm-research" in directives(r)
    assert "# account = llm-research  (site)" in r.stderr


def test_user_file_then_project_then_flag(tmp_path):
    user = user_toml(tmp_path, 'account = "u-acct"\nqos = "u-qos"\nmail_user = "me@example.org"\n'
                               'mail_type = ["END"]\nreservation = "u-res"\n')
    (tmp_path / "llmctl.toml").write_text('qos = "p-qos"\nreservation = "p-res"\n')
    r = launch(tmp_path, "--reservation", "flag-res", "--partition", "debug", "--time", "00:30:00")
    assert r.returncode == 0, r.stderr
    d = directives(r)
    for line in ("#SBATCH --account=u-acct", "#SBATCH --qos=p-qos", "#SBATCH --reservation=flag-res",
                 "#SBATCH --mail-user=me@example.org", "#SBATCH --mail-type=END",
                 "#SBATCH --partition=debug", "#SBATCH --time=00:30:00"):
        assert line in d, (line, d)
    assert f"# account = u-acct  (user {user})" in r.stderr
    assert f"# qos = p-qos  (project {tmp_path / 'llmctl.toml'})" in r.stderr
    assert "# reservation = flag-res  (flag)" in r.stderr
    assert "# time = 00:30:00  (flag)" in r.stderr


def test_home_config_without_xdg(tmp_path):
    p = tmp_path / "home" / ".config" / "llmctl" / "user.toml"
    p.parent.mkdir(parents=True)
    p.write_text('account = "home-acct"\n')
    see_tmp(tmp_path, "slurm-a100-ib")
    (tmp_path / "plan.toml").write_text(PLAN)
    import os

    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    env["HOME"] = str(tmp_path / "home")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llmctl", "train", "launch", "--plan", str(tmp_path / "plan.toml"),
                        "--launcher", "slurm", "--site", "slurm-a100-ib", "--run-dir", str(tmp_path / "run"),
                        "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --account=home-acct" in directives(r)


def test_unknown_key_in_user_file_is_refused(tmp_path):
    user = user_toml(tmp_path, 'acount = "typo"\n')
    r = launch(tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(user) in r.stderr and "acount" in r.stderr and "account" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["a'b; touch PWNED", "x $(touch PWNED)"])
def test_values_are_quoted(tmp_path, value):
    r = launch(tmp_path, "--account", value, "--qos", value)
    assert r.returncode == 0, r.stderr
    import shlex

    assert f"#SBATCH --account={shlex.quote(value)}" in directives(r)
    script = (tmp_path / "run" / "job.sh")
    import subprocess

    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.parametrize("value", ["a\nb", "bidi\u202ename"])
def test_control_characters_are_refused(tmp_path, value):
    r = launch(tmp_path, "--account", value)
    assert r.returncode == 2 and "account" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_mail_type_is_refused(tmp_path):
    r = launch(tmp_path, "--mail-user", "me@example.org", "--mail-type", "END,SOMETIMES")
    assert r.returncode == 2 and "SOMETIMES" in r.stderr


def test_reservation_is_slurm_only(tmp_path):
    r = launch(tmp_path, "--reservation", "R1", site="pbspro-a100", launcher="pbs")
    assert r.returncode == 2 and "reservation" in r.stderr and "--partition" in r.stderr


def test_pbs_takes_the_user_account(tmp_path):
    user_toml(tmp_path, 'account = "u-acct"\n')
    r = launch(tmp_path, site="pbspro-a100", launcher="pbs")
    assert r.returncode == 0, r.stderr
    assert "#PBS -A u-acct" in directives(r)


def test_serve_launch_takes_the_same_settings(tmp_path):
    see_tmp(tmp_path, "slurm-a100-ib")
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text("{}")
    r = run_cli("serve", "launch", "--artifact", str(art), "--launcher", "slurm", "--site", "slurm-a100-ib",
                "--account", "s-acct", "--qos", "s-qos", "--run-dir", str(tmp_path / "run"), "--dry-run",
                cwd=tmp_path, env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --account=s-acct" in directives(r) and "#SBATCH --qos=s-qos" in directives(r)
