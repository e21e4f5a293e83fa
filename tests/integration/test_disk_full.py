"""A full disk is one clean line, not a traceback (issue 13, item 4), on a real full filesystem
(a tiny tmpfs mounted for the test): the checkpoint writer, `llmctl export` and
`llmctl data prepare` each name the path, the operation and the space left, exit 2, and
leave what was on disk as it was, with no temporary file behind."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from conftest import run_cli  # noqa: E402
from trainkit import (make_project, make_run, prepare_data, quiet_env, records, run_train,  # noqa: E402
                      small_filesystem)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("diskfull"), docs=20)
    prepare_data(root)
    return root


def _one_clean_error(r, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], (n, r.stderr)
    return errors[0]


def test_checkpoint_on_a_full_disk(project):
    # Before: exit 1 and torch's `RuntimeError: [enforce fail at inline_container.cc:672]
    # unexpected pos ...`, with no word of disk space.
    from llmctl.train.checkpoint import Checkpointer

    run = make_run(project, "full", steps=20, interval=5, eval_interval=100)
    ck = run / "checkpoints"
    with small_filesystem(ck, "600k"):  # one checkpoint of the tiny model (~450 KB) fits, not two
        r = run_train(run)
        line = _one_clean_error(r, str(ck / ".tmp-step-00000010-"), "checkpoint", "No space left on device",
                                "free")
        assert "step-00000005" in line  # what `latest` still points at
        assert sorted(p.name for p in ck.iterdir()) == ["latest", "step-00000005"]  # no .tmp-* behind
        assert (ck / "latest").read_text().strip() == "step-00000005"
        assert records(run, "end") == []
        # The previous checkpoint is whole: every file matches its digest.
        from llmctl.train.checkpoint import verify_files

        assert verify_files(Checkpointer(ck).latest()) == []


@pytest.mark.parametrize("size,dtype,where", [("40k", "fp32", "model.safetensors"),
                                              ("100k", "bf16", "tokenizer.json")])
def test_export_to_a_full_disk(project, tmp_path, size, dtype, where):
    # Before: a SafetensorError (or shutil's OSError) traceback, exit 1.
    run = make_run(project, f"exp-{size}", steps=2, interval=2, eval_interval=100)
    assert run_train(run).returncode == 0
    small = tmp_path / "small"
    with small_filesystem(small, size):
        r = run_cli("export", "--checkpoint", str(run), "--out", str(small / "art"), "--dtype", dtype,
                    cwd=project)
        _one_clean_error(r, str(small / ".tmp-art" / where), "export", "No space left on device", "free")
        assert list(small.iterdir()) == []  # neither the artifact nor its temporary folder


def test_data_prepare_on_a_full_disk_keeps_the_data_there(project, tmp_path):
    # Before: h5py's `OSError: [Errno 28] Can't close file` traceback, exit 1.
    small = tmp_path / "small"
    cfg = project / "configs" / "data" / "small.toml"
    text = (project / "configs" / "data" / "tiny.toml").read_text()
    with small_filesystem(small, "250k"):
        out = small / "tiny"
        cfg.write_text(text.replace('dir = "data/tiny"', f'dir = "{out}"').replace("max_documents = 20",
                                                                                   "max_documents = 3"))
        r = run_cli("data", "prepare", "--config", str(cfg), "--workers", "1", "--json", cwd=project,
                    env=quiet_env())
        assert r.returncode == 0, r.stderr
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        # More documents than the disk holds: refused, and the data prepared before stays.
        cfg.write_text(text.replace('dir = "data/tiny"', f'dir = "{out}"'))
        r = run_cli("data", "prepare", "--config", str(cfg), "--workers", "1", cwd=project, env=quiet_env())
        _one_clean_error(r, str(small / ".tiny.tmp-"), "No space left on device", "free")
        assert sorted(p.name for p in small.iterdir()) == ["tiny"]  # no temporary folder behind
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert json.loads((out / "meta.json").read_text())["splits"]["train"]["documents"] > 0
    shutil.rmtree(small, ignore_errors=True)


def test_metrics_on_a_full_disk(project, tmp_path):
    # The run folder itself on a full disk: the metrics line that does not fit stops the run.
    run = tmp_path / "run"
    with small_filesystem(run, "12k"):
        (run / "config.toml").write_text((make_run(project, "metrics-full", steps=200, interval=1000,
                                                   eval_interval=1000) / "config.toml").read_text())
        r = run_train(run, LLMCTL_PROJECT_DIR=str(project))
        _one_clean_error(r, f"training metrics: cannot write {run / 'metrics.jsonl'}: No space left on device")
        assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())
