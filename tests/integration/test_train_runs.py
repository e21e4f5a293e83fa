"""The real trainer in real processes: it learns, resumes bit-exactly after SIGUSR1 (one
process) and after a rank crash (4 DDP ranks under torchrun), survives kill -9 during a
checkpoint write, and refuses bad input cleanly."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from trainkit import (HOLDPOINT, TINY_MODEL, held_env, make_project, make_run, prepare_data, quiet_env,  # noqa: E402
                      records, run_train, train_cmd)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("proj"))
    prepare_data(root)
    return root


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _unigram_cross_entropy(data: Path) -> float:
    """Validation loss of the best model that ignores context: the training split's
    token frequencies (add-one smoothed) scored on the validation split."""
    import numpy as np

    from llmctl.data.shards import TokenStore

    tr, va = TokenStore(data, "train"), TokenStore(data, "val")
    counts = np.bincount(tr.read(0, tr.tokens), minlength=512) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[va.read(0, va.tokens)].mean())


@pytest.fixture(scope="module")
def trained(project):
    run = make_run(project, "learn", steps=150, interval=50, eval_interval=50)
    return run, run_train(run)


def test_training_learns_and_records_the_run(project, trained):
    from llmctl.train.progress import summarize

    run, r = trained
    assert r.returncode == 0, r.stderr
    trains, evals = records(run, "train"), records(run, "eval")
    assert [t["step"] for t in trains] == list(range(1, 151))
    first, final = evals[0]["val_loss"], evals[-1]["val_loss"]
    assert final < first
    # Below what an untrained model (uniform: ln V) and any context-free model can reach.
    assert final < math.log(512)
    assert final < _unigram_cross_entropy(project / "data" / "tiny")
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "memory_gb"):
        assert all(isinstance(t[key], float) for t in trains), key
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000150"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == \
        ["step-00000050", "step-00000100", "step-00000150"][-2:]  # keep_last = 2
    s = summarize(run)
    assert s["finished"] and s["step"] == 150 and s["val_loss"] == final
    assert "step    150/150" in r.stdout and "validation loss" in r.stdout


def _interrupted_run(run: Path, at: int) -> subprocess.CompletedProcess:
    """The run, held after step `at` (tests/holdpoint), then sent SIGUSR1."""
    p = subprocess.Popen(train_cmd(run), cwd=run, env=held_env(at), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if line.startswith(f"llmctl-test: held after step {at}"):
                break
        p.send_signal(signal.SIGUSR1)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_resume_after_sigusr1_is_bit_exact(project):
    steps = 50
    whole = make_run(project, "whole", steps=steps, interval=1000, eval_interval=20)
    assert run_train(whole).returncode == 0
    cut = make_run(project, "cut", steps=steps, interval=1000, eval_interval=20)
    first = _interrupted_run(cut, at=5)
    assert first.returncode == 75, first.stderr  # stopped on purpose, resumable
    ends = records(cut, "end")
    assert ends[-1]["reason"] == "preempted"
    k = ends[-1]["step"]
    assert k == 5  # held after step 5, where the signal landed
    assert (cut / "checkpoints" / "latest").read_text().strip() == f"step-{k:08d}"
    second = run_train(cut)
    assert second.returncode == 0, second.stderr
    assert [r["step"] for r in records(cut, "start")] == [0, k]
    # The same loss curve, step by step, and the same final weights, bit for bit.
    a = {r["step"]: r["loss"] for r in records(whole, "train")}
    b = {r["step"]: r["loss"] for r in records(cut, "train")}
    assert a == b and len(a) == steps
    assert [r["val_loss"] for r in records(whole, "eval")] == [r["val_loss"] for r in records(cut, "eval")]
    wa = _weights(whole / "checkpoints" / f"step-{steps:08d}" / "model.safetensors")
    wb = _weights(cut / "checkpoints" / f"step-{steps:08d}" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)
    oa = torch.load(whole / "checkpoints" / f"step-{steps:08d}" / "optimizer.pt", weights_only=True)
    ob = torch.load(cut / "checkpoints" / f"step-{steps:08d}" / "optimizer.pt", weights_only=True)
    assert all(torch.equal(oa["state"][i]["exp_avg"], ob["state"][i]["exp_avg"]) for i in oa["state"])


def _torchrun(run: Path, ranks: int, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", "llmctl.train", "--run-dir", str(run)]
    return subprocess.run(cmd, cwd=run, env=quiet_env(**env), capture_output=True, text=True, timeout=600)


def _dcp_tensors(ck: Path) -> dict:
    """Every weight and every optimizer tensor of a sharded checkpoint, whole."""
    from llmctl.parallel.checkpoint import Source

    src = Source(ck)
    return src.read([k for k, md in src._meta.items() if k.startswith(("model.", "optim.state.")) and
                     hasattr(md, "size")])


@pytest.mark.slow
def test_ddp_resume_after_a_rank_crash_is_bit_exact(project):
    """4 DDP ranks under torchrun (gloo, CPU): rank 3 dies after step 4, the relaunch resumes
    from the step-3 checkpoint and ends with the uninterrupted run's weights and optimizer
    state, bit for bit. Four ranks because two could not tell: a ring all-reduce over more
    than two ranks sums each element in an order set by its offset in DDP's gradient bucket,
    whose layout changes after a process's first backward (the bucket rebuild), so the resumed
    process's first step summed in another order than the uninterrupted run's step 4 until
    llmctl.parallel.transformer.settle_buckets (about 16 of 21 tensors then differed by ~1e-8)."""
    def four_rank_run(name: str) -> Path:
        run = make_run(project, name, steps=6, interval=3, eval_interval=1000)
        cfg = run / "config.toml"
        cfg.write_text(cfg.read_text().replace("micro_batch_size = 4", "micro_batch_size = 2"))
        return run

    whole = four_rank_run("ddp4-whole")
    r = _torchrun(whole, 4)
    assert r.returncode == 0, r.stderr[-3000:]
    cut = four_rank_run("ddp4-cut")
    crash = {"PYTHONPATH": str(HOLDPOINT), "LLMCTL_TEST_CRASH_AT_STEP": "4", "LLMCTL_TEST_CRASH_RANK": "3"}
    first = _torchrun(cut, 4, **crash)
    assert first.returncode != 0 and "llmctl-test: rank 3 crashing after step 4" in first.stderr, \
        first.stderr[-3000:]
    assert (cut / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    second = _torchrun(cut, 4)
    assert second.returncode == 0, second.stderr[-3000:]
    starts = records(cut, "start")
    assert [s["step"] for s in starts] == [0, 3] and starts[1]["layout"]["dp"] == 4, starts
    a = {t["step"]: t["loss"] for t in records(whole, "train")}
    b = {t["step"]: t["loss"] for t in records(cut, "train")}  # the rerun's step 4 overwrites the lost one
    assert a == b and sorted(a) == [1, 2, 3, 4, 5, 6], (a, b)
    wa = _dcp_tensors(whole / "checkpoints" / "step-00000006")
    wb = _dcp_tensors(cut / "checkpoints" / "step-00000006")
    assert wa.keys() == wb.keys()
    differ = {k: (wa[k].double() - wb[k].double()).abs().max().item()
              for k in wa if not torch.equal(wa[k], wb[k])}
    assert not differ, differ


WRITER = r"""
import sys, torch
from llmctl.config.model import ModelConfig
from llmctl.model.transformer import Transformer
from llmctl.train.checkpoint import Checkpointer
c = ModelConfig(name="big", template="llama", layers=4, hidden=256, heads=4, vocab_size=8192, max_seq_len=64)
torch.manual_seed(0)
m = Transformer(c)
opt = torch.optim.AdamW(m.parameters())
x = torch.randint(0, 8192, (1, 16))
m(x, x).backward()
opt.step()
ck = Checkpointer(sys.argv[1], keep_last=5)
h = {"model_hash": "m", "config_hash": "c", "data": {"position": 0}}
step = 1
while True:
    ck.save(step, m, opt, h)
    print("saved", step, flush=True)
    step += 1
"""


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer
    from llmctl.train.checkpoint import Checkpointer

    folder = tmp_path / "ck"
    for attempt in range(5):
        shutil.rmtree(folder, ignore_errors=True)
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], env=quiet_env(),
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "saved 1"
        deadline = time.monotonic() + 60
        while not list(folder.glob(".tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.001)
        p.kill()  # SIGKILL, mid-write
        p.wait()
        partial = list(folder.glob(".tmp-*"))
        if partial:
            break
    else:
        pytest.fail("never caught the writer mid-checkpoint in 5 tries")
    ck = Checkpointer(folder)
    latest = ck.latest()
    tmp_step = int(partial[0].name.split("-")[2])
    assert latest.name == f"step-{tmp_step - 1:08d}"  # the previous, complete checkpoint
    c = ModelConfig(name="big", template="llama", layers=4, hidden=256, heads=4, vocab_size=8192, max_seq_len=64)
    m = Transformer(c)
    opt = torch.optim.AdamW(m.parameters())
    state = ck.load(latest, m, opt, {"model_hash": "m", "config_hash": "c"}, "cpu")
    assert state["step"] == tmp_step - 1
    assert ck.clean_partial() == partial and not list(folder.glob(".tmp-*"))


def _expect_error(run: Path, *needles: str) -> None:
    r = run_train(run)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr


def test_a_tokenizer_larger_than_the_model_vocabulary(project, tmp_path):
    proj = tmp_path / "p"
    shutil.copytree(project / "configs", proj / "configs")
    (proj / "data").symlink_to(project / "data")
    (proj / "configs" / "models" / "tiny.json").write_text(json.dumps({**TINY_MODEL, "vocab_size": 256}))
    run = make_run(proj, "small-vocab", steps=5)
    _expect_error(run, "vocab_size 256", "vocabulary of 512", "tiny.json")
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_a_corrupt_shard(project, tmp_path):
    proj = tmp_path / "p"
    shutil.copytree(project / "configs", proj / "configs")
    shutil.copytree(project / "data", proj / "data")
    shard = proj / "data" / "tiny" / "train-00000.h5"
    shard.write_bytes(shard.read_bytes()[:1000])
    run = make_run(proj, "corrupt", steps=5)
    _expect_error(run, "train-00000.h5", "corrupt shard")


def test_data_not_prepared(project, tmp_path):
    proj = tmp_path / "p"
    shutil.copytree(project / "configs", proj / "configs")
    run = make_run(proj, "nodata", steps=5)
    _expect_error(run, "no prepared data", "llmctl data prepare")


def test_a_checkpoint_of_another_model_is_refused_and_kept(project, trained, tmp_path):
    proj = tmp_path / "p"
    shutil.copytree(project / "configs", proj / "configs")
    (proj / "data").symlink_to(project / "data")
    run = proj / "runs" / "swap"
    shutil.copytree(trained[0], run)
    before = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    (proj / "configs" / "models" / "tiny.json").write_text(json.dumps({**TINY_MODEL, "hidden": 48}))
    (run / "config.toml").write_text((run / "config.toml").read_text().replace("max_steps = 150",
                                                                               "max_steps = 160"))
    _expect_error(run, "checkpoint of another model", "refusing")
    assert {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()} == before


def test_project_folder_from_the_environment(project, tmp_path):
    # A run folder outside the project finds its configs through LLMCTL_PROJECT_DIR.
    run = tmp_path / "elsewhere"
    run.mkdir()
    shutil.copy(make_run(project, "template", steps=2) / "config.toml", run / "config.toml")
    r = subprocess.run(train_cmd(run), cwd=run, env=quiet_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "LLMCTL_PROJECT_DIR" in r.stderr
    r = subprocess.run(train_cmd(run), cwd=run, env=quiet_env(LLMCTL_PROJECT_DIR=str(project)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert records(run, "end")[-1]["step"] == 2


