"""Script details a cluster's reviewer asks for: a job named after its run, a log per
task, whole nodes only for jobs that take them, unbuffered output, PALS ranks on PBS,
NCCL settings that fit the site's fabric."""

from __future__ import annotations

import pytest

from conftest import run_cli
from jobsites import see_tmp
from llmctl.jobs.golden import GOLDEN_DIR

PLAN = '[inputs]\nmodel = "m.json"\nnodes = 1\ngpus_per_node = {g}\nglobal_batch = {g}\n\n[parallelism]\ndp = {g}\n'


def launch(tmp_path, *args, g=8):
    see_tmp(tmp_path, "slurm-a100-ib")
    (tmp_path / "plan.toml").write_text(PLAN.format(g=g))
    return run_cli("train", "launch", "--plan", str(tmp_path / "plan.toml"), "--launcher", "slurm",
                   "--site", "slurm-a100-ib", "--dry-run", *args, cwd=tmp_path)


def test_job_is_named_after_its_run_folder(tmp_path):
    r = launch(tmp_path, "--run-dir", str(tmp_path / "llama-lr3e-4"))
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --job-name=llama-lr3e-4" in r.stdout


def test_default_run_folder_names_the_job_with_its_time(tmp_path):
    r = launch(tmp_path)
    assert r.returncode == 0, r.stderr
    name = next(ln for ln in r.stdout.splitlines() if ln.startswith("#SBATCH --job-name="))
    assert name.startswith("#SBATCH --job-name=train-2") and len(name) > len("#SBATCH --job-name=train-")


def test_name_flag_wins(tmp_path):
    r = launch(tmp_path, "--name", "mine", "--run-dir", str(tmp_path / "run"))
    assert "#SBATCH --job-name=mine" in r.stdout


def test_whole_node_job_is_exclusive_a_one_gpu_job_is_not():
    train = (GOLDEN_DIR / "slurm-a100-ib" / "slurm" / "train.sh").read_text()
    serve = (GOLDEN_DIR / "slurm-a100-ib" / "slurm" / "serve-persistent.sh").read_text()
    assert "#SBATCH --exclusive" in train and "#SBATCH --mem=0" in train
    assert "--exclusive" not in serve
    # one GPU of eight: an eighth of the CPUs and of the memory
    assert "#SBATCH --cpus-per-task=16" in serve and "#SBATCH --mem=125G" in serve


def test_each_srun_task_logs_beside_the_main_log():
    for kind in ("train", "eval", "serve-batch", "serve-persistent"):
        script = (GOLDEN_DIR / "slurm-h100-pyxis" / "slurm" / f"{kind}.sh").read_text()
        srun = next(ln for ln in script.splitlines() if ln.startswith("srun "))
        assert "--unbuffered --open-mode=append" in srun
        assert "/logs/%j_%t_log.out" in srun and "/logs/%j_%t_log.err" in srun
        assert "#SBATCH --output=/lustre/project/runs/" in script and "/logs/%j_0_log.out" in script


def test_output_is_unbuffered_everywhere():
    for path in GOLDEN_DIR.glob("*/*/*.sh"):
        assert "export PYTHONUNBUFFERED=1" in path.read_text(), path
    for path in GOLDEN_DIR.glob("*/k8s/*.yaml"):
        assert "PYTHONUNBUFFERED" in path.read_text(), path


def test_pbs_local_rank_falls_back_to_cray_pals():
    script = (GOLDEN_DIR / "pbspro-a100" / "pbs" / "train.sh").read_text()
    assert "${PALS_LOCAL_RANKID:-0}" in script and "${PALS_RANKID:-0}" in script


def test_slurm_log_files_include_each_task(tmp_path):
    from llmctl.jobs.rundir import RunDir
    from llmctl.schedulers.slurm import SCHEDULER

    run = RunDir(tmp_path)
    run.logs.mkdir(parents=True)
    for n in ("7_0_log.out", "7_0_log.err", "7_1_log.out", "7_1_log.err", "8_0_log.out"):
        (run.logs / n).write_text("x")
    names = [p.name for p in SCHEDULER.log_files(run, "7")]
    assert names == ["7_0_log.out", "7_0_log.err", "7_1_log.out", "7_1_log.err"]


def _site(tmp_path, fabric, env):
    path = tmp_path / "s.toml"
    path.write_text(f'name = "s"\nscheduler = "slurm"\ndefault_partition = "p"\ngpu_request = "none"\n'
                    f'python = "python3"\n[partitions.p]\nnodes = 1\ncpus_per_node = 2\nmemory_gb = 2\n'
                    f'[network]\ninter_node = "{fabric}"\n[env]\n{env}')
    return path


@pytest.mark.parametrize("fabric,env,needle", [
    ("InfiniBand", 'NCCL_IB_GID_INDEX = "3"\n', "RoCE setting"),
    ("RoCE", 'NCCL_IB_HCA = "mlx5"\n', "GID index"),
])
def test_nccl_settings_must_fit_the_fabric(tmp_path, fabric, env, needle):
    r = run_cli("site", "check", str(_site(tmp_path, fabric, env)), cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_shipped_ib_site_has_no_roce_gid():
    text = (GOLDEN_DIR / "slurm-a100-ib" / "slurm" / "train.sh").read_text()
    assert "NCCL_IB_GID_INDEX" not in text


def test_k8s_pods_ask_for_their_share_of_what_a_node_can_allocate():
    import yaml

    def resources(kind):
        docs = list(yaml.safe_load_all((GOLDEN_DIR / "k8s-h100" / "k8s" / f"{kind}.yaml").read_text()))
        return docs[-1]["spec"]["template"]["spec"]["containers"][0]["resources"]

    train, serve = resources("train"), resources("serve-persistent")
    # node: 192 CPUs, 1800 GB, 8 GPUs; the site reserves 4 CPUs and 32 GB
    assert train["requests"] == train["limits"] == {"cpu": "184", "memory": "1768Gi", "nvidia.com/gpu": 8}
    assert serve["requests"] == {"cpu": "23", "memory": "221Gi", "nvidia.com/gpu": 1}
