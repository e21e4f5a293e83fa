"""Experiment tracking with a real (tiny, CPU) training run: TensorBoard, MLflow and W&B
each read back with their own reader, against the run's metrics.jsonl; a preempted and
resumed run continues the same tracker runs with its restart marked; a missing tracker
package stops the launch at pre-flight."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from trainkit import (held_env, make_project, make_run, prepare_data, quiet_env, records,  # noqa: E402
                      run_train, train_cmd, train_toml)

pytestmark = pytest.mark.slow

ALL = '\n[tracking]\nbackends = ["tensorboard", "mlflow", "wandb"]\nproject = "tiny"\n'


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("proj"))
    prepare_data(root)
    return root


@pytest.fixture(scope="module")
def tracked(project):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    run = make_run(project, "tracked", steps=6, interval=6, eval_interval=3, extra=ALL)
    r = run_train(run, timeout=600)
    assert r.returncode == 0, r.stderr
    return run


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run, "train")}


def test_tensorboard_event_files_hold_the_metrics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tracked / "tracking" / "tensorboard" / "tracked"), size_guidance={"tensors": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss"} <= set(scalars)
    got = {e.step: e.value for e in acc.Scalars("train/loss")}
    want = _losses(tracked)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    assert all(got[s] == pytest.approx(want[s], rel=1e-6) for s in want)
    assert [e.step for e in acc.Scalars("val/loss")] == [3, 6]
    # The resolved config as text: TensorBoard's text plugin keeps it as a string tensor.
    text = acc.Tensors("config.toml/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr = 0.003" in text and "[tracking]" in text


def test_mlflow_file_store_holds_the_metrics_params_and_files(tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"file:{tracked / 'tracking' / 'mlruns'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert len(runs) == 1 and runs["tags.mlflow.runName"][0] == "tracked"
    assert runs["params.optimizer.lr"][0] == "0.003" and runs["params.training.max_steps"][0] == "6"
    assert runs["status"][0] == "FINISHED"
    client = MlflowClient(tracking_uri=uri)
    run_id = runs["run_id"][0]
    hist = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    want = _losses(tracked)
    assert sorted(hist) == sorted(want) and all(hist[s] == pytest.approx(want[s]) for s in want)
    assert "config.toml" in [f.path for f in client.list_artifacts(run_id)]
    assert json.loads((tracked / "tracking-runs.json").read_text())[f"{tracked}:train:"]["mlflow"] == run_id


def wandb_records(path: Path):
    """Every record of a W&B transaction log (.wandb): W&B's LevelDB-style log (a 7-byte
    header, then 32 KiB blocks of CRC + length + type chunks), each record one of W&B's
    own protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += room
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # full, or last chunk of a record
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec


def test_wandb_offline_run_holds_the_metrics_config_and_files(tracked):
    files = list((tracked / "tracking" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    history, config, saved = {}, {}, []
    for rec in wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history[row["_step"]] = row
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "files":
            saved += [f.path for f in rec.files.files]
    want = _losses(tracked)
    assert {s: history[s]["train/loss"] for s in want} == pytest.approx(want)
    assert history[6]["val/loss"] > 0 and "train/grad_norm" in history[1]
    assert config["optimizer.lr"] == 0.003 and config["run.model"] == "llama-test"
    assert "config.toml" in saved


def test_preempted_run_resumes_the_same_tracker_runs_with_the_restart_marked(project, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run = make_run(project, "resumed", steps=6, interval=10, eval_interval=10,
                   extra='\n[tracking]\nbackends = ["tensorboard", "mlflow"]\n')
    p = subprocess.Popen(train_cmd(run), cwd=run, env=held_env(3), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if line.startswith("llmctl-test: held after step 3"):
                break
        p.send_signal(signal.SIGUSR1)
        p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 75
    r = run_train(run, timeout=600)
    assert r.returncode == 0, r.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tracking" / "tensorboard" / "resumed"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 7))
    assert [e.step for e in acc.Scalars("train/restart")] == [3]
    # loss.png marks the same restart, read from metrics.jsonl
    from llmctl.train.plot import run_figure

    ax = run_figure(run / "metrics.jsonl").axes[0]
    assert [ln.get_xdata()[0] for ln in ax.lines if (ln.get_gid() or "").startswith("restart-")] == [3]
    assert [ln.get_gid() for ln in ax.lines if (ln.get_gid() or "").startswith("stop-")] == ["stop-3-preempted"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"file:{run / 'tracking' / 'mlruns'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["llmctl"])
    assert len(runs) == 1  # the restart reopened the run
    steps = [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(runs["run_id"][0], "train/loss")]
    assert sorted(steps) == list(range(1, 7))


def test_missing_tracker_package_stops_the_launch_at_preflight(project, tmp_path):
    """A Python that cannot import wandb (this one, with wandb hidden from find_spec)
    refuses the job before it is queued, naming the key and what to install."""
    cfg = project / "configs" / "train-wandb.toml"
    cfg.write_text(train_toml(steps=4, interval=4, eval_interval=4, warmup=1)
                   + '\n[tracking]\nbackends = ["wandb"]\n')
    plan = tmp_path / "plan.toml"
    plan.write_text('[inputs]\nmodel = "configs/models/tiny.json"\nnodes = 1\ngpus_per_node = 1\n'
                    'global_batch = 8\nseq_len = 32\n\n[parallelism]\ndp = 1\nmicro_batch = 4\ngrad_accum = 2\n')
    code = ("import importlib.util as u, sys; real = u.find_spec\n"
            "u.find_spec = lambda n, *a: None if n == 'wandb' else real(n, *a)\n"
            "from llmctl.cli import main; sys.exit(main())")
    r = subprocess.run([sys.executable, "-c", code, "train", "launch", "--plan", str(plan), "--config", str(cfg),
                        "--run-dir", str(tmp_path / "run")], cwd=project, capture_output=True, text=True,
                       env=quiet_env(LLMCTL_STATE_DIR=str(tmp_path / "state")), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "tracking.backends" in ln)
    assert "'wandb'" in line and "llmctl[track]" in line
    assert not (tmp_path / "run" / "submission.json").exists()
    assert not records(tmp_path / "run")


def test_eval_results_go_to_the_suite_trackers_with_their_standard_errors(tracked, tmp_path, monkeypatch):
    """`eval run` with a suite that has [tracking]: each task metric and its standard error
    at the checkpoint's step, read back with MLflow's and TensorBoard's readers."""
    from llmctl.eval import tasks as T

    builtin = Path(T.__file__).parent / "builtin"
    suite = tmp_path / "suite.toml"
    suite.write_text(f'name = "s"\nbootstrap_iters = 20\n\n[[tasks]]\nname = "code_completion"\n'
                     f'path = "{builtin / "code_completion.toml"}"\n\n'
                     '[tracking]\nbackends = ["mlflow", "tensorboard"]\nproject = "evals"\nrun_name = "ev"\n')
    out = tmp_path / "res" / "results.json"
    r = subprocess.run([sys.executable, "-m", "llmctl", "eval", "run", "--checkpoint", str(tracked),
                        "--suite", str(suite), "--limit", "8", "--output", str(out)],
                       cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"tracking: mlflow, tensorboard in {tmp_path / 'res' / 'tracking'}" in r.stderr
    res = json.loads(out.read_text())["results"]["code_completion"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'res' / 'tracking' / 'mlruns'}")
    run = client.search_runs([client.get_experiment_by_name("evals").experiment_id])[0]
    assert run.data.metrics["eval/code_completion/acc"] == pytest.approx(res["acc,none"])
    assert run.data.metrics["eval/code_completion/acc_stderr"] == pytest.approx(res["acc_stderr,none"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/code_completion/acc")] == [6]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "res" / "tracking" / "tensorboard" / "ev"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("eval/code_completion/acc")] == \
        [(6, pytest.approx(res["acc,none"]))]
