"""`--set KEY=VALUE` overrides of job settings and site-config fields, and srun's CPU/GPU
binding: the override lands in the script, --dry-run names its source, a bad key or value
is refused as a wrong site-config file would be (exit 2, nothing written), and the site
file itself is never changed."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from jobsites import see_tmp

PLAN = ('[inputs]\nmodel = "m.json"\nnodes = {nodes}\ngpus_per_node = {gpn}\nglobal_batch = {gb}\n\n'
        '[parallelism]\ndp = {gb}\n')


def launch(tmp_path, *args, site="slurm-a100-ib", nodes=1, gpn=1, run="run"):
    see_tmp(tmp_path, site)
    (tmp_path / "plan.toml").write_text(PLAN.format(nodes=nodes, gpn=gpn, gb=nodes * gpn))
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    return run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--launcher", "slurm",
                   "--site", site, "--run-dir", str(tmp_path / run), "--dry-run", *args,
                   cwd=tmp_path, env=env)


def srun_line(r):
    return next(ln for ln in r.stdout.splitlines() if ln.startswith("srun "))


def test_set_site_fields_and_job_settings(tmp_path):
    site_file = see_tmp(tmp_path, "slurm-a100-ib") / "slurm-a100-ib.toml"
    before = site_file.read_text()
    r = launch(tmp_path, "--set", "env.NCCL_DEBUG=INFO", "--set", "account=proj42",
               "--set", "partitions.gpu.max_time=72:00:00", "--time", "60:00:00",
               "--set", "requeue_grace_s=600", "--set", 'modules=["cuda/12.4", "nccl/2.21"]')
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "export NCCL_DEBUG=INFO" in out
    assert "#SBATCH --account=proj42" in out
    assert "#SBATCH --time=2-12:00:00" in out  # allowed only by the raised max_time
    assert "#SBATCH --signal=B:USR1@600" in out
    assert "module load cuda/12.4\nmodule load nccl/2.21\n" in out
    assert "# account = proj42  (flag --set)" in r.stderr
    assert "# site.env.NCCL_DEBUG = INFO  (flag --set, over site 'slurm-a100-ib')" in r.stderr
    assert "# site.requeue_grace_s = 600  (flag --set" in r.stderr
    spec = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert spec["overrides"] == {"env.NCCL_DEBUG": "INFO", "partitions.gpu.max_time": "72:00:00",
                                 "requeue_grace_s": 600, "modules": ["cuda/12.4", "nccl/2.21"]}
    assert site_file.read_text() == before


def test_without_set_the_site_limit_holds(tmp_path):
    r = launch(tmp_path, "--time", "60:00:00")
    assert r.returncode == 2
    assert "exceeds partition 'gpu'" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("item, words", [
    ("nosuchkey=1", "nosuchkey: unknown key 'nosuchkey'"),
    ("container.nosuch=1", "container.nosuch: unknown key"),
    ("requeue_grace_s=-5", "requeue_grace_s: Input should be greater than or equal to 0"),
    ("requeue_grace_s=soon", "requeue_grace_s:"),
    ("env.A;B=1", "not KEY=VALUE"),
    ("novalue", "not KEY=VALUE"),
    ("setup=[\"rm -rf ~\"]", "setup lines are shell code"),
    ("cpu_bind=$(id)", "is not an srun binding"),
    ("account.x=1", "account is a value"),
    ("env.NCCL_DEBUG=INFO --set env.NCCL_DEBUG=WARN", "given twice"),
])
def test_bad_set_is_refused_before_anything_is_written(tmp_path, item, words):
    args = []
    for part in item.split(" --set "):
        args += ["--set", part]
    r = launch(tmp_path, *args)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()
    if words.endswith(":") or "unknown key" in words or "Input should" in words or "binding" in words:
        assert str(tmp_path / "site-configs" / "slurm-a100-ib.toml") in r.stderr  # the file, then the key


def test_set_and_flag_must_agree(tmp_path):
    r = launch(tmp_path, "--set", "account=a1", "--account", "a2")
    assert r.returncode == 2
    assert "--set account=a1 and --account a2 disagree" in r.stderr
    same = launch(tmp_path, "--set", "qos=high", "--qos", "high")
    assert same.returncode == 0, same.stderr
    assert "#SBATCH --qos=high" in same.stdout


def test_set_value_is_quoted_in_the_script(tmp_path):
    r = launch(tmp_path, "--set", "env.LLMCTL_NOTE=a b; $(touch pwned) `id`")
    assert r.returncode == 0, r.stderr
    assert "export LLMCTL_NOTE='a b; $(touch pwned) `id`'" in r.stdout


def test_one_task_per_gpu_is_bound_to_its_cores_and_gpu(tmp_path):
    r = launch(tmp_path, nodes=2, gpn=8)
    assert r.returncode == 0, r.stderr
    line = srun_line(r)
    assert "--ntasks-per-node=8" in line
    assert "--cpu-bind=cores --gpu-bind=single:1" in line


def test_binding_follows_the_site_and_can_be_turned_off(tmp_path):
    r = launch(tmp_path, "--set", "gpu_bind=map_gpu:0,1,2,3,4,5,6,7", "--set", "cpu_bind=none", nodes=1, gpn=8)
    assert r.returncode == 0, r.stderr
    assert "--cpu-bind=none --gpu-bind=map_gpu:0,1,2,3,4,5,6,7" in srun_line(r)


def test_torchrun_task_owns_the_node_gpus_so_no_gpu_bind(tmp_path):
    r = launch(tmp_path, "--set", "launcher=torchrun", nodes=2, gpn=8)
    assert r.returncode == 0, r.stderr
    line = srun_line(r)
    assert "--ntasks-per-node=1" in line and "--cpu-bind=cores" in line
    assert "--gpu-bind" not in line


def test_cpu_partition_has_no_gpu_bind(tmp_path):
    # A one-process job on the PBS site: no srun at all, so no binding flags.
    see_tmp(tmp_path, "pbspro-a100")
    (tmp_path / "plan.toml").write_text(PLAN.format(nodes=1, gpn=1, gb=1))
    r = run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--launcher", "pbs",
                "--site", "pbspro-a100", "--run-dir", str(tmp_path / "run"), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--gpu-bind" not in r.stdout and "--cpu-bind" not in r.stdout


# --- the plan and the training config (issue #19: no silent overrides) ---------------

TRAIN = '[model]\nname = "m"\nconfig_file = "m.json"\n\n[parallel]\nglobal_batch_size = {gb}\n\n[data]\nseq_len = {seq}\n'
PLAN_SEQ = ('[inputs]\nmodel = "m.json"\nnodes = 1\ngpus_per_node = 2\nglobal_batch = 8\nseq_len = 128\n\n'
            '[parallelism]\ndp = 2\nmicro_batch = 1\ngrad_accum = 4\n')


def launch_local(tmp_path, train_text, run="run"):
    (tmp_path / "plan.toml").write_text(PLAN_SEQ)
    (tmp_path / "train.toml").write_text(train_text)
    return run_cli("train", "launch", "--plan", "plan.toml", "--config", "train.toml", "--dry-run",
                   "--run-dir", str(tmp_path / run), cwd=tmp_path)


def test_config_and_plan_that_disagree_are_refused_naming_both(tmp_path):
    r = launch_local(tmp_path, TRAIN.format(gb=16, seq=256))
    assert r.returncode == 2
    assert "parallel.global_batch_size = 16 in train.toml, but the plan was solved for global batch 8" in r.stderr
    assert "data.seq_len = 256 in train.toml, but the plan was solved for sequence length 128" in r.stderr
    assert "--train train.toml" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_agreeing_or_unset_values_take_the_plan_and_sp_only_with_tp(tmp_path):
    import tomllib

    r = launch_local(tmp_path, TRAIN.format(gb=8, seq=128))
    assert r.returncode == 0, r.stderr
    cfg = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert cfg["parallel"]["global_batch_size"] == 8 and cfg["data"]["seq_len"] == 128
    assert "sequence_parallel" not in cfg["parallel"]  # tp = 1: meaningless, so not written
    r = launch_local(tmp_path, '[model]\nname = "m"\nconfig_file = "m.json"\n', run="run2")
    assert r.returncode == 0, r.stderr
    cfg = tomllib.loads((tmp_path / "run2" / "config.toml").read_text())
    assert cfg["parallel"]["global_batch_size"] == 8 and cfg["data"]["seq_len"] == 128
