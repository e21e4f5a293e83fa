"""What a site does not allow is refused before anything is written or submitted,
with a one-line error (exit 2, no traceback) listing what the site allows."""

from __future__ import annotations

import pytest

from conftest import run_cli
from jobsites import see_tmp

PLAN = '[inputs]\nmodel = "m.json"\nnodes = {n}\ngpus_per_node = {g}\nglobal_batch = {b}\n\n[parallelism]\ndp = {b}\n'


def plan(tmp_path, n=1, g=8):
    p = tmp_path / f"plan-{n}-{g}.toml"
    p.write_text(PLAN.format(n=n, g=g, b=n * g))
    return p


def launch(tmp_path, *args, n=1, g=8):
    see_tmp(tmp_path, "slurm-a100-ib", "slurm-h100-pyxis", "pbspro-a100", "torque-v100")
    return run_cli("train", "launch", "--plan", str(plan(tmp_path, n, g)), "--dry-run",
                   "--run-dir", str(tmp_path / "run"), *args, cwd=tmp_path)


def assert_refused(r, tmp_path, *needles):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    assert not (tmp_path / "run").exists(), "nothing may be written for a refused job"


def test_time_over_partition_maximum_is_refused(tmp_path):
    r = launch(tmp_path, "--launcher", "slurm", "--site", "slurm-a100-ib", "--time", "3-00:00:00")
    assert_refused(r, tmp_path, "3-00:00:00", "2-00:00:00", "gpu: up to 32 node(s)", "debug: up to 2 node(s)")


def test_unknown_partition_is_refused(tmp_path):
    r = launch(tmp_path, "--launcher", "slurm", "--site", "slurm-a100-ib", "--partition", "bigmem")
    assert_refused(r, tmp_path, "no partition 'bigmem'", "gpu:", "debug:")


def test_too_many_gpus_per_node_is_refused(tmp_path):
    r = launch(tmp_path, "--launcher", "pbs", "--site", "pbspro-a100", g=8)
    assert_refused(r, tmp_path, "8 GPUs per node", "have 4", "prod: up to 256 node(s), 4 GPU(s)/node")


def test_too_many_nodes_is_refused(tmp_path):
    r = launch(tmp_path, "--launcher", "slurm", "--site", "slurm-a100-ib", "--partition", "debug", n=4)
    assert_refused(r, tmp_path, "4 nodes exceed partition 'debug'")


def test_backend_the_site_cannot_run_is_refused(tmp_path):
    r = launch(tmp_path, "--launcher", "slurm", "--site", "torque-v100", g=4)
    assert_refused(r, tmp_path, "'pbs'", "--launcher pbs")


def test_size_flags_that_break_the_plan_are_refused(tmp_path):
    r = launch(tmp_path, "--launcher", "slurm", "--site", "slurm-a100-ib", "--nodes", "2")
    assert_refused(r, tmp_path, "2 node(s) x 8 GPU(s) = 16 ranks", "1 x 8 = 8")


def test_array_needs_a_batch_scheduler(tmp_path):
    cfgs = []
    for i in range(2):
        c = tmp_path / f"c{i}.toml"
        c.write_text('[model]\nname = "m"\nconfig_file = "m.json"\n')
        cfgs += ["--config", str(c)]
    r = launch(tmp_path, "--launcher", "local", *cfgs, g=2)
    assert_refused(r, tmp_path, "job arrays need a batch scheduler")


def test_bad_plan_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[inputs]\nmodel = "m.json"\n\n[parallelism]\ndp = 1\ntpp = 2\n')
    r = run_cli("train", "launch", "--plan", str(bad), "--dry-run", "--run-dir", str(tmp_path / "run"),
                cwd=tmp_path)
    assert_refused(r, tmp_path, "bad.toml", "parallelism.tpp")


@pytest.mark.parametrize("site,backend,g", [("slurm-a100-ib", "slurm", 8), ("slurm-h100-pyxis", "slurm", 8),
                                            ("pbspro-a100", "pbs", 4), ("torque-v100", "pbs", 4)])
def test_gpu_request_follows_the_site_syntax(tmp_path, site, backend, g):
    r = launch(tmp_path, "--launcher", backend, "--site", site, g=g)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "run" / "job.sh").read_text()
    expected = {"slurm-a100-ib": "#SBATCH --gres=gpu:a100:8", "slurm-h100-pyxis": "#SBATCH --gpus-per-node=8",
                "pbspro-a100": ":ngpus=4", "torque-v100": ":gpus=4"}[site]
    assert expected in text
    directives = [line for line in text.splitlines() if line.startswith(("#SBATCH", "#PBS"))]
    assert directives == sorted(directives)


def test_max_restarts_renders_torchrun_max_restarts_and_a_fresh_store_across_nodes(tmp_path):
    """The site's max_restarts (here from --set) becomes torchrun's --max-restarts; on 2 nodes the
    job also exports TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a fresh rendezvous store per attempt)."""
    r = launch(tmp_path, "--launcher", "slurm", "--site", "slurm-a100-ib", "--set", "launcher=torchrun",
               "--set", "max_restarts=2", n=2, g=8)
    assert r.returncode == 0, r.stderr
    script = (tmp_path / "run" / "job.sh").read_text()
    assert "-m torch.distributed.run --nnodes=2 --nproc-per-node=8 --max-restarts=2 " in script
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in script


def test_max_restarts_on_one_node_renders_no_store_setting(tmp_path):
    r = launch(tmp_path, "--launcher", "slurm", "--site", "slurm-a100-ib", "--set", "launcher=torchrun",
               "--set", "max_restarts=1", n=1, g=8)
    assert r.returncode == 0, r.stderr
    script = (tmp_path / "run" / "job.sh").read_text()
    assert "--max-restarts=1 " in script and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in script


@pytest.mark.parametrize("args,how", [
    (("--launcher", "slurm", "--site", "slurm-a100-ib"), "one srun task per rank"),
    (("--launcher", "slurm", "--site", "slurm-a100-ib", "--set", "launcher=mpirun"), "with mpirun"),
])
def test_max_restarts_without_torchrun_is_refused(tmp_path, args, how):
    r = launch(tmp_path, *args, "--set", "max_restarts=2")
    assert_refused(r, tmp_path, "max_restarts = 2 needs torchrun", how, "--set launcher=torchrun")


def test_max_restarts_of_a_one_process_job_is_refused(tmp_path):
    r = launch(tmp_path, "--launcher", "slurm", "--site", "slurm-a100-ib", "--set", "launcher=torchrun",
               "--set", "max_restarts=2", n=1, g=1)
    assert_refused(r, tmp_path, "max_restarts = 2", "one process")


def test_a_server_on_several_ranks_starts_them_with_mpirun(tmp_path):
    """serve launch --nodes/--gpus-per-node: MPI ranks (mpirun with the site's serve_mpirun_args,
    whatever the site's launcher for training), --mpi-mode passed to the server."""
    see_tmp(tmp_path, "slurm-a100-ib")
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text("{}")
    r = run_cli("serve", "launch", "--artifact", str(art), "--launcher", "slurm", "--site", "slurm-a100-ib",
                "--nodes", "2", "--gpus-per-node", "4", "--mpi-mode", "dp", "--dry-run",
                "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script = (tmp_path / "run" / "job.sh").read_text()
    assert "#SBATCH --nodes=2" in script
    # slurm-a100-ib loads Open MPI: its serve_mpirun_args say --enable-recovery (hydra's flag would
    # be an unknown option there)
    assert "mpirun --enable-recovery -np 8 -machinefile" in script and "--mpi-mode dp" in script
    r = run_cli("serve", "launch", "--artifact", str(art), "--launcher", "k8s", "--site", "k8s-h100",
                "--gpus-per-node", "2", "--dry-run", "--run-dir", str(tmp_path / "k"), cwd=tmp_path)
    assert r.returncode == 2 and "needs MPI" in r.stderr and not (tmp_path / "k").exists(), r.stderr


def test_mpirun_is_refused_under_pyxis_whose_containers_start_through_srun(tmp_path):
    """Ranks started by mpirun on a pyxis site would run on the bare host, outside the image
    and its mounts: refused, for a training launcher and for a server on several ranks."""
    r = launch(tmp_path, "--launcher", "slurm", "--site", "slurm-h100-pyxis", "--set", "launcher=mpirun", n=2)
    assert_refused(r, tmp_path, "outside the pyxis container", "--set launcher=srun")
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text("{}")
    r = run_cli("serve", "launch", "--artifact", str(art), "--launcher", "slurm", "--site", "slurm-h100-pyxis",
                "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "--run-dir", str(tmp_path / "run"),
                cwd=tmp_path)
    assert_refused(r, tmp_path, "a server on 16 ranks", "outside the pyxis container", "one rank")
    r = run_cli("serve", "launch", "--artifact", str(art), "--launcher", "slurm", "--site", "slurm-h100-pyxis",
                "--dry-run", "--run-dir", str(tmp_path / "one"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--container-image=" in (tmp_path / "one" / "job.sh").read_text()
