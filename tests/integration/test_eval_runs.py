"""`llmctl eval` on a really trained tiny model, through the real CLI: trained beats its
first checkpoint and an untrained model, the results file has the harness's layout,
watchers evaluate each checkpoint exactly once (partial checkpoints, killed
watchers), bad input exits 2, and a scheduled watcher runs on the local SLURM cluster."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, needs, run_cli

pytest.importorskip("torch")
pytest.importorskip("h5py")
sys.path.insert(0, str(REPO / "tests" / "unit"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from trainkit import TINY_MODEL, make_project, make_run, prepare_data, quiet_env, run_train  # noqa: E402

HARNESS = REPO / "tests" / "fixtures" / "eval" / "lm_eval_results_2025-01-21.json"
CKPT = "step-{:08d}"
FAST = ["--tasks", "stdlib_perplexity,code_completion", "--limit", "40"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project with a run trained 150 steps (checkpoints 50, 100, 150) and an untrained one."""
    root = make_project(tmp_path_factory.mktemp("evalproj") / "p", docs=150,
                        model={**TINY_MODEL, "hidden": 64, "ffn": 128})
    prepare_data(root)
    run = make_run(root, "r", steps=150, interval=50, eval_interval=150)
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace("keep_last = 2", "keep_last = 5"))
    r = run_train(run)
    assert r.returncode == 0, r.stderr[-2000:]

    # The untrained model: the trainer's own initial weights, saved by its own Checkpointer.
    import torch

    from llmctl.model.transformer import Transformer
    from llmctl.train.checkpoint import Checkpointer
    from llmctl.train.setup import load_run

    untrained = make_run(root, "untrained", steps=1)
    s = load_run(untrained)
    torch.manual_seed(s.cfg.training.seed)
    model = Transformer(s.model_cfg)
    Checkpointer(untrained / "checkpoints").save(0, model, torch.optim.AdamW(model.parameters()), s.hashes())
    return root, run, untrained


def ok(*args, cwd, timeout=300):
    r = run_cli(*args, cwd=cwd, env=quiet_env(), timeout=timeout)
    assert r.returncode == 0, f"llmctl {' '.join(args)}\n{r.stdout}\n{r.stderr}"
    return r


def results_of(root, ckpt: Path, out: Path, *extra) -> dict:
    ok("eval", "run", "--checkpoint", str(ckpt), "--output", str(out), *FAST, *extra, cwd=root)
    return json.loads(out.read_text())


def test_trained_beats_first_checkpoint_and_untrained(trained, tmp_path):
    root, run, untrained = trained
    first = results_of(root, run / "checkpoints" / CKPT.format(50), tmp_path / "first.json")["results"]
    last = results_of(root, run / "checkpoints" / CKPT.format(150), tmp_path / "last.json")["results"]
    base = results_of(root, untrained / "checkpoints" / CKPT.format(0), tmp_path / "base.json")["results"]
    ppl = {k: r["stdlib_perplexity"]["perplexity,none"] for k, r in
           (("first", first), ("last", last), ("untrained", base))}
    assert ppl["last"] < ppl["first"] < ppl["untrained"], ppl
    # Bits per byte and loss tell the same story as perplexity.
    assert last["stdlib_perplexity"]["bits_per_byte,none"] < first["stdlib_perplexity"]["bits_per_byte,none"]
    acc_last, acc_base = last["code_completion"]["acc,none"], base["code_completion"]["acc,none"]
    # Beyond the bootstrap noise of both, not just by one question.
    margin = last["code_completion"]["acc_stderr,none"] + base["code_completion"]["acc_stderr,none"]
    assert acc_last - acc_base > margin, (acc_last, acc_base, margin)


def test_results_have_the_harness_layout_and_samples(trained, tmp_path):
    root, run, _ = trained
    out = tmp_path / "res.json"
    r = ok("eval", "run", "--checkpoint", str(run), "--output", str(out), "--limit", "5",
           "--log-samples", "--batch-size", "3", cwd=root)
    ours, theirs = json.loads(out.read_text()), json.loads(HARNESS.read_text())
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
    assert ours["config"]["checkpoint"].endswith(CKPT.format(150))  # a run folder means its latest
    for section in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
                    "group_subtasks"):
        assert set(ours[section]) == {"stdlib_perplexity", "code_completion", "arithmetic"}, section
    their_task = next(iter(theirs["results"].values()))
    shape = {k.split(",")[0].replace("acc", "M") for k in their_task}  # alias, M, M_stderr
    for task, res in ours["results"].items():
        metrics = [k for k in res if "," in k and "_stderr," not in k]
        assert metrics, task
        for m in metrics:
            assert m.endswith(",none") and m.replace(",", "_stderr,", 1) in res
            assert {k.split(",")[0].replace(m.split(",")[0], "M") for k in ("alias", m,
                    m.replace(",", "_stderr,", 1))} == shape
        assert set(ours["n-samples"][task]) == set(next(iter(theirs["n-samples"].values())))
        assert set(next(iter(theirs["configs"].values()))) & set(ours["configs"][task]) >= {
            "task", "output_type", "doc_to_text", "num_fewshot", "metric_list", "metadata",
            "target_delimiter", "fewshot_delimiter", "description"}
    assert ours["n-shot"]["arithmetic"] == 3 and ours["n-samples"]["arithmetic"]["effective"] == 5
    # --limit 5 on a perplexity task: 5 windows, not 6 (each window predicts max_len - 1 tokens).
    assert ours["n-samples"]["stdlib_perplexity"]["effective"] == 5
    assert {"model", "model_args", "batch_size", "limit", "bootstrap_iters", "fewshot_seed"} <= set(ours["config"])
    assert ours["config"]["batch_size"] == 3
    # Per-sample logs, one JSONL per task, one line per evaluated document.
    samples = [json.loads(x) for x in (tmp_path / "res_samples_code_completion.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and {"doc_id", "doc", "target", "arguments", "resps", "acc"} <= set(samples[0])
    assert "|code_completion|" in r.stdout and "acc_norm" in r.stdout  # the summary table


def _copy_partial(src: Path, dst: Path) -> None:
    """A checkpoint folder as a writer leaves it mid-write: everything but state.json."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "state.json":
            shutil.copy2(f, dst / f.name)


def _finish(src: Path, dst: Path, step: int) -> None:
    state = json.loads((src / "state.json").read_text())
    (dst / "state.json").write_text(json.dumps({**state, "step": step}))


def _watch_cmd(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llmctl", "eval", "watch", "--run-dir", str(run),
            "--tasks", "code_completion,arithmetic", "--limit", "4", *extra]


def _table(run: Path) -> list[dict]:
    p = run / "eval" / "results.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []


def test_watchers_evaluate_each_checkpoint_exactly_once(trained, tmp_path):
    root, src_run, _ = trained
    run = tmp_path / "runs" / "w"
    shutil.copytree(src_run, run, ignore=shutil.ignore_patterns("eval"))
    ckpts = run / "checkpoints"
    _copy_partial(ckpts / CKPT.format(150), ckpts / CKPT.format(200))  # still being written

    env = quiet_env(LLMCTL_PROJECT_DIR=str(root))  # the copied run lives outside the project
    procs = [subprocess.Popen(_watch_cmd(run), cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    logs = "".join(err for _, err in outs)
    evaluated = sorted(line.split(":")[0] for line in logs.splitlines() if line.endswith(": evaluating"))
    assert evaluated == [CKPT.format(s) for s in (50, 100, 150)], logs  # each once, the partial one never
    rows = _table(run)
    assert [r["step"] for r in rows] == [50, 100, 150]
    assert all(Path(r["results"]).is_file() for r in rows)
    assert (run / "eval" / "metrics.png").read_bytes()[:4] == b"\x89PNG"

    # Once complete, the next run picks it up, and only it.
    _finish(ckpts / CKPT.format(150), ckpts / CKPT.format(200), 200)
    r = subprocess.run(_watch_cmd(run), cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if line.endswith(": evaluating")] == \
        [f"{CKPT.format(200)}: evaluating"]
    assert [r["step"] for r in _table(run)] == [50, 100, 150, 200]
    assert f"plot (each metric against the step, ± standard error): {run / 'eval' / 'metrics.png'}" in r.stdout

    # A watcher killed mid-evaluation leaves no row; the next run redoes that checkpoint.
    # The weights are a FIFO nobody writes to: opening them blocks, so the watcher is held
    # inside the evaluation however fast the machine is (no sleep that a quick eval outruns).
    shutil.copytree(ckpts / CKPT.format(150), ckpts / CKPT.format(250))
    _finish(ckpts / CKPT.format(150), ckpts / CKPT.format(250), 250)
    weights = ckpts / CKPT.format(250) / "model.safetensors"
    assert weights.is_file()
    weights.unlink()
    os.mkfifo(weights)
    p = subprocess.Popen(_watch_cmd(run, "--limit", "40"), cwd=root, env=env, stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(180, p.kill)  # a watcher that never says "evaluating" fails, not hangs
    watchdog.start()
    seen = False
    for line in p.stderr:
        if line.strip() == f"{CKPT.format(250)}: evaluating":
            seen = True
            os.kill(p.pid, signal.SIGKILL)
            break
    watchdog.cancel()
    p.wait(timeout=60)
    assert seen, "the watcher never started evaluating the new checkpoint"
    weights.unlink()
    shutil.copy2(ckpts / CKPT.format(150) / "model.safetensors", weights)
    assert p.returncode == -signal.SIGKILL
    assert [r["step"] for r in _table(run)] == [50, 100, 150, 200]
    assert CKPT.format(250) not in json.loads((run / "eval" / "state.json").read_text())["done"]
    r = subprocess.run(_watch_cmd(run), cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"{CKPT.format(250)}: evaluating" in r.stderr, r.stderr
    assert [r["step"] for r in _table(run)] == [50, 100, 150, 200, 250]


def _exit2(r):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: ")
    return r.stderr


def test_bad_checkpoints_exit_2(trained, tmp_path):
    root, run, _ = trained
    err = _exit2(run_cli("eval", "run", "--checkpoint", str(tmp_path / "nope"), cwd=root))
    assert "checkpoint not found" in err
    # A folder that is no checkpoint at all.
    err = _exit2(run_cli("eval", "run", "--checkpoint", str(tmp_path), cwd=root))
    assert "not a complete checkpoint" in err

    # A tokenizer with more tokens than the model's vocabulary.
    proj = tmp_path / "p"
    shutil.copytree(root, proj, ignore=shutil.ignore_patterns("eval", "untrained"))
    from llmctl.data.tokenizer import train_bpe

    big = train_bpe((p.read_text(errors="replace") for p in sorted(Path(shutil.__file__).parent.glob("*.py"))[:60]),
                    2048, json.loads((proj / "data/tiny/meta.json").read_text())["tokenizer"]["eos_token"])
    meta = json.loads((proj / "data/tiny/meta.json").read_text())
    big.save(str(proj / "data/tiny" / meta["tokenizer"]["file"]))
    out = tmp_path / "never.json"
    err = _exit2(run_cli("eval", "run", "--checkpoint", str(proj / "runs/r"), "--output", str(out), cwd=proj))
    assert "vocabulary mismatch" in err and "512" in err
    assert not out.exists()


def test_a_corrupt_checkpoint_fails_alone(trained, tmp_path):
    root, src_run, _ = trained
    run = tmp_path / "runs" / "c"
    shutil.copytree(src_run, run, ignore=shutil.ignore_patterns("eval"))
    (run / "checkpoints" / CKPT.format(100) / "model.safetensors").write_bytes(b"\0garbage" * 100)
    r = subprocess.run(_watch_cmd(run, "--tasks", "code_completion"), cwd=root,
                       env=quiet_env(LLMCTL_PROJECT_DIR=str(root)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{CKPT.format(100)}: failed:" in r.stderr and "model.safetensors" in r.stderr
    assert [row["step"] for row in _table(run)] == [50, 150]  # the others were evaluated


def test_scheduled_watcher_runs_on_local_slurm(trained, tmp_path):
    from jobsupport import slurm_up

    needs("slurm", slurm_up(), "start it with `bash scripts/slurm-local.sh up`")
    root, src_run, _ = trained
    run = tmp_path / "runs" / "s"
    shutil.copytree(src_run, run, ignore=shutil.ignore_patterns("eval"))
    for step in (50, 100):
        shutil.rmtree(run / "checkpoints" / CKPT.format(step))
    suite = tmp_path / "suite.toml"
    suite.write_text('name = "tiny"\nbootstrap_iters = 100\n\n[[tasks]]\nname = "code_completion"\n'
                     'limit = 4\n')
    entry = ok("eval", "schedule", "--every", "15m", "--run-dir", str(run), "--suite", str(suite),
               "--launcher", "slurm", "--time", "00:10:00", cwd=root).stdout
    lines = [x for x in entry.splitlines() if x and not x.startswith("# ")]
    opts = [x.split(None, 1)[1] for x in lines if x.startswith("#SCRON ")]
    cron = lines[-1].split(None, 5)
    assert cron[:5] == ["*/15", "*", "*", "*", "*"]
    # scrontab submits each run of the entry as a batch job with the #SCRON options;
    # this cluster has no scrontab daemon, so submit that same job once by hand.
    r = subprocess.run(["sbatch", "--parsable", *[shlex.split(o)[0] for o in opts],
                        f"--export=ALL,OMP_NUM_THREADS=1,LLMCTL_PROJECT_DIR={root}", "--wrap", cron[5]],
                       capture_output=True, text=True, timeout=60, cwd=root)
    assert r.returncode == 0, (r.stdout, r.stderr)
    job = r.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 240
    # Poll (sbatch --wait backs off to many seconds): done when the job left the queue.
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if not q.stdout.strip():
            break
        time.sleep(0.5)
    logs = "".join(p.read_text() for p in (run / "eval" / "logs").glob(f"watch-{job}.out"))
    assert [row["step"] for row in _table(run)] == [150], logs
    assert "code_completion/acc" in _table(run)[0] and "evaluated: 1" in logs


def test_slurm_job_chain_reruns_the_watcher_until_stopped(trained, tmp_path):
    """`--launcher slurm-chain --install`: the job runs the watcher and queues itself again;
    a checkpoint that appears later is evaluated by a later link; the stop file ends it."""
    from jobsupport import slurm_up

    needs("slurm", slurm_up(), "start it with `bash scripts/slurm-local.sh up`")
    root, src_run, _ = trained
    run = tmp_path / "runs" / "chain run"  # a space: every path in the script is quoted
    shutil.copytree(src_run, run, ignore=shutil.ignore_patterns("eval"))
    later = tmp_path / "later"
    later.mkdir()
    for step in (50, 100):
        shutil.move(str(run / "checkpoints" / CKPT.format(step)), str(later / CKPT.format(step)))
    suite = tmp_path / "suite.toml"
    suite.write_text('name = "tiny"\nbootstrap_iters = 100\n\n[[tasks]]\nname = "code_completion"\n'
                     'limit = 4\n')
    args = ["eval", "schedule", "--every", "3s", "--run-dir", str(run), "--suite", str(suite),
            "--launcher", "slurm-chain", "--time", "00:10:00", "--install"]
    r = run_cli(*args, cwd=root, env=quiet_env(LLMCTL_PROJECT_DIR=str(root)))
    assert r.returncode == 0, r.stderr
    first = r.stderr.split("queued job ")[1].split(";")[0]
    name = "eval-watch-chain run"
    stop = run / "eval" / "schedule.stop"

    def wait_for(cond, what, limit=180):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.5)
        logs = "".join(p.read_text() for p in (run / "eval" / "logs").glob("watch-*.out"))
        raise AssertionError(f"{what} did not happen; logs:\n{logs}")

    try:
        wait_for(lambda: [row["step"] for row in _table(run)] == [150], "the first link's eval")
        # installing again while a link is queued rewrites the script and queues nothing more
        again = run_cli(*args, cwd=root, env=quiet_env(LLMCTL_PROJECT_DIR=str(root)))
        assert again.returncode == 0 and "already queued" in again.stderr, again.stderr
        shutil.move(str(later / CKPT.format(100)), str(run / "checkpoints" / CKPT.format(100)))
        wait_for(lambda: sorted(row["step"] for row in _table(run)) == [100, 150], "a later link's eval")
        jobs = {p.name for p in (run / "eval" / "logs").glob("watch-*.out")}
        assert f"watch-{first}.out" in jobs and len(jobs) >= 2, jobs
    finally:
        stop.touch()
    # the next link sees the stop file, exits without running or queueing anything
    wait_for(lambda: not subprocess.run(["squeue", "-h", "--me", "-n", name], capture_output=True,
                                        text=True).stdout.strip(), "the chain's end", 120)
    time.sleep(4)  # longer than the interval: nothing new may be queued
    assert not subprocess.run(["squeue", "-h", "--me", "-n", name], capture_output=True, text=True).stdout.strip()
    assert any("stop file found" in p.read_text() for p in (run / "eval" / "logs").glob("watch-*.out"))
    assert sorted(row["step"] for row in _table(run)) == [100, 150]  # each checkpoint once


def test_train_launch_eval_after_adds_an_afterok_eval_job(tmp_path):
    from jobsupport import slurm_up, write_plan, write_site

    needs("slurm", slurm_up(), "start it with `bash scripts/slurm-local.sh up`")
    env = {"LLMCTL_STATE_DIR": str(tmp_path / "state")}
    site = write_site(tmp_path, env={"STANDIN_STEPS": "2"})
    run = tmp_path / "runs" / "t"
    r = run_cli("train", "launch", "--plan", str(write_plan(tmp_path)), "--launcher", "slurm", "--site", str(site),
                "--run-dir", str(run), "--eval-after", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    train_id = json.loads((run / "submission.json").read_text())["job_id"]
    eval_run = tmp_path / "runs" / "t-eval"
    eval_id = json.loads((eval_run / "submission.json").read_text())["job_id"]
    try:
        script = (eval_run / "job.sh").read_text()
        assert f"#SBATCH --dependency=afterok:{train_id}" in script
        assert "eval run --checkpoint" in script and str(run) in script
        q = subprocess.run(["squeue", "-h", "-j", eval_id, "-o", "%r"], capture_output=True, text=True)
        assert q.stdout.strip() in ("Dependency", ""), q.stdout  # waits for training (or already done)
    finally:
        subprocess.run(["scancel", eval_id, train_id], capture_output=True)
    r = run_cli("train", "launch", "--plan", str(write_plan(tmp_path)), "--launcher", "local",
                "--run-dir", str(tmp_path / "runs" / "l"), "--eval-after", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "job dependencies" in r.stderr


def test_watch_submit_runs_each_eval_as_a_job(trained, tmp_path):
    root, src_run, _ = trained
    run = tmp_path / "runs" / "j"
    shutil.copytree(src_run, run, ignore=shutil.ignore_patterns("eval"))
    for step in (50, 100):
        shutil.rmtree(run / "checkpoints" / CKPT.format(step))
    env = quiet_env(LLMCTL_PROJECT_DIR=str(root), LLMCTL_STATE_DIR=str(tmp_path / "state"))
    cmd = _watch_cmd(run, "--tasks", "code_completion", "--submit", "--launcher", "local")
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "submitted: 1" in r.stdout, (r.stdout, r.stderr)
    result = run / "eval" / "results" / f"{CKPT.format(150)}.json"
    deadline = time.monotonic() + 180
    outs = []
    while not result.is_file() and time.monotonic() < deadline:
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert "submitted: 0" in r.stdout, r.stdout  # never a second job for the same checkpoint
        outs.append(r.stdout)
        time.sleep(1)
    assert result.is_file()
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    outs.append(r.stdout)
    # The job's result is taken into the table exactly once: by the run after it finished, or
    # by a run in the loop that was still going when the job wrote it (a loaded machine).
    assert sum("evaluated: 1" in o for o in outs) == 1, outs
    assert "skipped: 1" in r.stdout or "evaluated: 1" in r.stdout, (r.stdout, r.stderr)
    assert [row["step"] for row in _table(run)] == [150]
