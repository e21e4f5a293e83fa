"""A corrupt or diverged checkpoint never becomes `latest` (issue 13, item 3), with the real
trainer in real processes:

- flipped bytes in any file of a checkpoint are refused at resume with a one-line error naming
  the file (state.json records a sha256 of every file); `--skip-verify` loads it anyway;
- a non-finite loss or gradient norm stops the run at that step, exit 2, without a checkpoint,
  without moving `latest` and without pruning (`training.nonfinite = "stop"`), or skips up to
  `training.max_skipped_steps` steps without touching the weights (`"skip"`);
- `llmctl export` refuses a checkpoint with non-finite weights, naming the tensor.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from trainkit import (TINY_MODEL, flip_bytes, make_project, make_run, prepare_data, records,  # noqa: E402
                      run_train)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("integrity"), docs=20)
    prepare_data(root)
    return root


@pytest.fixture(scope="module")
def base(project):
    """A finished 20-step run with checkpoints at steps 10 and 20 (keep_last = 2)."""
    run = make_run(project, "base", steps=20, interval=10, eval_interval=10)
    r = run_train(run)
    assert r.returncode == 0, r.stderr
    return run


def _continue(project: Path, base: Path, name: str) -> Path:
    """A copy of `base` set to train on to step 40 (the same config otherwise)."""
    run = project / "runs" / name
    shutil.copytree(base, run)
    (run / "metrics.jsonl").unlink()
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace("max_steps = 20", "max_steps = 40"))
    return run


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}


def _one_clean_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], (n, r.stderr)


def test_every_file_of_a_checkpoint_has_its_digest_in_state_json(base):
    import hashlib

    ck = base / "checkpoints" / "step-00000020"
    files = json.loads((ck / "state.json").read_text())["files"]
    assert sorted(files) == ["model.safetensors", "optimizer.pt", "rng.pt"]
    for name, rec in files.items():
        data = (ck / name).read_bytes()
        assert rec == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_flipped_bytes_in_the_weights_are_refused_naming_the_file(project, base):
    # Before: resume exited 0 and trained on from the damaged weights.
    run = _continue(project, base, "flip-weights")
    flip_bytes(run / "checkpoints" / "step-00000020" / "model.safetensors")
    before = _files(run)
    r = run_train(run)
    _one_clean_error(r, "step-00000020/model.safetensors", "sha256")
    assert "--skip-verify" in r.stderr
    assert _files(run) == before and not records(run, "train")
    # For the brave: loaded as it is, and the run goes on.
    r = run_train(run, args=("--skip-verify",))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not verified" in r.stderr
    end = records(run, "end")[-1]
    assert end["step"] == 40 and end["reason"] == "finished"


def test_flipped_bytes_in_the_optimizer_state_never_reach_latest(project, base):
    # Before: the NaN loss ran to the end with exit 0, the NaN checkpoint became `latest`
    # and keep_last pruned both good ones.
    run = _continue(project, base, "flip-optimizer")
    cfg = run / "config.toml"  # a checkpoint due right after the first step (not in config_hash)
    cfg.write_text(cfg.read_text().replace("interval_steps = 10", "interval_steps = 1"))
    flip_bytes(run / "checkpoints" / "step-00000020" / "optimizer.pt", value=0xFF)
    before = _files(run)
    _one_clean_error(run_train(run), "step-00000020/optimizer.pt")
    assert _files(run) == before
    # Loaded unverified, the NaN it carries turns step 21's update into NaN weights (its loss
    # and gradient norm are still finite): the checkpoint due then is refused, the step named;
    # nothing is written, `latest` stays, nothing is pruned.
    r = run_train(run, args=("--skip-verify",))
    _one_clean_error(r, "step 21", "not finite", "step-00000020")
    assert _files(run) == before
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000020"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000010",
                                                                        "step-00000020"]
    end = records(run, "end")[-1]
    assert end["reason"] == "nonfinite" and end["step"] == 21


def _diverging_run(project: Path, name: str, extra: str = "") -> Path:
    """A run whose learning rate (1e30, no warm-up) blows the weights up in step 1: step 2's
    gradient norm and every later loss are NaN."""
    run = make_run(project, name, steps=8, interval=1, eval_interval=100)
    cfg = run / "config.toml"
    text = cfg.read_text().replace("lr = 0.003", "lr = 1e30").replace("warmup_steps = 5", "warmup_steps = 0")
    cfg.write_text(text.replace("keep_last = 2", "keep_last = 10").replace("[training]\n",
                                                                          "[training]\n" + extra))
    return run


def test_a_diverged_run_stops_at_the_step_without_a_checkpoint(project):
    run = _diverging_run(project, "diverge")
    r = run_train(run)
    _one_clean_error(r, "step 2", "gradient norm", "not finite", "step-00000001")
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000001"
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000001"]
    assert records(run, "end")[-1]["reason"] == "nonfinite"


def test_skip_leaves_the_weights_alone_up_to_max_skipped_steps(project):
    run = _diverging_run(project, "skip", 'nonfinite = "skip"\nmax_skipped_steps = 2\n')
    r = run_train(run)
    # Steps 2 and 3 are skipped (and checkpointed: their state is step 1's), step 4 is one too many.
    _one_clean_error(r, "step 4", "3 steps", "max_skipped_steps = 2")
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-00000001", "step-00000002", "step-00000003"]
    assert (ck / "latest").read_text().strip() == "step-00000003"
    from safetensors.torch import load_file

    w1, w3 = load_file(str(ck / "step-00000001" / "model.safetensors")), load_file(
        str(ck / "step-00000003" / "model.safetensors"))
    assert all(torch.equal(w1[k], w3[k]) for k in w1)  # a skipped step changes no weight
    assert json.loads((ck / "step-00000003" / "state.json").read_text())["skipped_steps"] == 2
    skipped = [t["step"] for t in records(run, "train") if t.get("skipped")]
    assert skipped == [2, 3, 4]


def test_an_unknown_nonfinite_policy_is_refused(project):
    run = make_run(project, "badpolicy", steps=2, extra="")
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace("[training]\n", '[training]\nnonfinite = "ignore"\n'))
    _one_clean_error(run_train(run), "training.nonfinite")
    assert not (run / "checkpoints").exists()


def test_a_checkpoint_without_digests_loads_with_a_warning(project, base):
    # Written before digests existed: loaded, unverified, and said so.
    run = _continue(project, base, "old")
    state = run / "checkpoints" / "step-00000020" / "state.json"
    data = json.loads(state.read_text())
    data.pop("files", None)
    state.write_text(json.dumps(data))
    r = run_train(run)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning:" in r.stderr and "no file digests" in r.stderr and "step-00000020" in r.stderr


def _checkpoint_with(project: Path, base: Path, name: str, value: float) -> Path:
    """A run whose latest checkpoint (step 21, written by the real writer, digests and all)
    holds `value` in one weight."""
    from safetensors.torch import load_model

    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer
    from llmctl.train.checkpoint import Checkpointer

    run = project / "runs" / name
    shutil.copytree(base, run)
    ck = run / "checkpoints"
    src = ck / "step-00000020"
    model = Transformer(ModelConfig(**TINY_MODEL))
    load_model(model, str(src / "model.safetensors"))
    with torch.no_grad():
        model.blocks[1].mlp.up.weight[3, 5] = value
    opt = torch.optim.AdamW(model.parameters())
    state = json.loads((src / "state.json").read_text())
    Checkpointer(ck, keep_last=5).save(21, model, opt, {k: v for k, v in state.items() if k != "files"})
    return run


def test_export_refuses_non_finite_weights_naming_the_tensor(project, base, tmp_path):
    # Before: the artifact was written with the NaNs in it.
    from conftest import run_cli

    run = _checkpoint_with(project, base, "nan-weights", float("nan"))
    out = tmp_path / "art"
    r = run_cli("export", "--checkpoint", str(run), "--out", str(out), cwd=project)
    _one_clean_error(r, "blocks.1.mlp.up.weight", "1 non-finite", "step-00000021")
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_export_refuses_weights_that_overflow_fp16(project, base, tmp_path):
    from conftest import run_cli

    run = _checkpoint_with(project, base, "big-weights", 1e5)  # finite, beyond fp16's 65504
    r = run_cli("export", "--checkpoint", str(run), "--out", str(tmp_path / "a"), "--dtype", "fp16", cwd=project)
    _one_clean_error(r, "model.layers.1.mlp.up_proj.weight", "overflow fp16")
    assert not (tmp_path / "a").exists()
    r = run_cli("export", "--checkpoint", str(run), "--out", str(tmp_path / "b"), "--dtype", "bf16", cwd=project)
    assert r.returncode == 0, r.stderr


def test_export_verifies_the_checkpoint_and_skip_verify_exports_anyway(project, base, tmp_path):
    from conftest import run_cli

    run = project / "runs" / "export-flip"
    shutil.copytree(base, run)
    flip_bytes(run / "checkpoints" / "step-00000020" / "model.safetensors", count=1)
    r = run_cli("export", "--checkpoint", str(run), "--out", str(tmp_path / "a"), cwd=project)
    _one_clean_error(r, "step-00000020/model.safetensors")
    assert not (tmp_path / "a").exists()
    r = run_cli("export", "--checkpoint", str(run), "--out", str(tmp_path / "b"), "--skip-verify",
                cwd=project)
    assert r.returncode == 0, r.stderr


def test_eval_run_verifies_the_checkpoint_and_skip_verify_evaluates_anyway(project, base, tmp_path):
    from conftest import run_cli

    run = project / "runs" / "eval-flip"
    shutil.copytree(base, run)
    flip_bytes(run / "checkpoints" / "step-00000020" / "optimizer.pt", count=1)  # not even read by eval
    opts = ("--tasks", "arithmetic", "--limit", "2")
    r = run_cli("eval", "run", "--checkpoint", str(run), *opts, cwd=project)
    _one_clean_error(r, "step-00000020/optimizer.pt")
    r = run_cli("eval", "run", "--checkpoint", str(run), *opts, "--skip-verify", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "files not verified" in r.stderr
    _one_clean_error(run_cli("eval", "run", "--artifact", str(tmp_path), "--skip-verify", cwd=project),
                     "--skip-verify: only with --checkpoint")
