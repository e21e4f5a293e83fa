"""The main job end to end on the local site, through the real CLI, as a user runs it:
scaffold -> hw probe -> plan compute -> data prepare -> train launch (local) -> job status.

A shortened version of `make demo` (fewer documents and steps)."""

from __future__ import annotations

import json
import math
import re
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("h5py")


def test_scaffold_probe_plan_prepare_train_status(cli, tmp_path):
    def ok(*args):
        r = cli(*args, cwd=proj, timeout=300)
        assert r.returncode == 0, f"llmctl {' '.join(args)}\n{r.stdout}\n{r.stderr}"
        return r

    proj = tmp_path
    ok("init", "scaffold", "--template", "llama", "--size", "tiny", "--name", "p")
    proj = tmp_path / "p"
    # a short run: 40 steps, a small slice of the corpus
    train = (proj / "configs/train.toml").read_text()
    train = re.sub(r"max_steps = \d+", "max_steps = 40", train)
    train = re.sub(r"warmup_steps = \d+", "warmup_steps = 5", train)
    train = re.sub(r"eval_interval = \d+", "eval_interval = 20", train)
    train = re.sub(r"interval_steps = \d+", "interval_steps = 20", train)
    (proj / "configs/train.toml").write_text(train)
    data = (proj / "configs/data/example.toml").read_text().replace("seed = 1234", "seed = 1234\nmax_documents = 150")
    (proj / "configs/data/example.toml").write_text(data)

    ok("hw", "probe", "--emit", "configs/hw/local.toml")
    ok("plan", "compute", "--model", "configs/models/llama-tiny.json", "--hardware", "configs/hw/local.toml",
       "--train", "configs/train.toml", "--out", "plans/local.toml")
    ok("data", "prepare", "--config", "configs/data/example.toml")
    r = ok("train", "launch", "--plan", "plans/local.toml", "--config", "configs/train.toml",
           "--data", "configs/data/example.toml", "--launcher", "local", "--run-dir", "runs/e2e")
    run = proj / "runs/e2e"
    assert (run / "job.sh").is_file()

    deadline = time.monotonic() + 240
    while True:
        st = json.loads(ok("job", "status", "runs/e2e", "--json").stdout)
        if st["state"] in ("COMPLETED", "FAILED", "CANCELLED") or time.monotonic() > deadline:
            break
        time.sleep(2)
    logs = ok("job", "logs", "runs/e2e").stdout
    assert st["state"] == "COMPLETED", logs
    prog = st["progress"]
    assert prog["finished"] and prog["step"] == 40
    assert prog["val_loss"] < math.log(4096)  # better than an untrained (uniform) model
    assert "validation loss" in logs
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    human = ok("job", "status", "runs/e2e").stdout
    assert "COMPLETED" in human and "step 40/40" in human
