"""`llmctl plan calibrate`: the planner learns from runs slower than it predicted."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from conftest import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainkit import TINY_MODEL  # noqa: E402

PLAN_ARGS = ["--strategy", "manual", "--dp", "1", "--tp", "1", "--pp", "1", "--micro-batch", "4",
             "--seq-len", "32", "--global-batch", "8", "--gpus-per-node", "1", "--nodes", "1"]


def predicted_step(plan: Path) -> float:
    return float(re.search(r"^step_time_s = ([0-9.e-]+)", plan.read_text(), re.M).group(1))


def test_calibrated_profile_moves_the_prediction_toward_the_measurement(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_MODEL))
    assert run_cli("hw", "probe", "--emit", "hw.toml", cwd=tmp_path).returncode == 0
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    r = run_cli("plan", "compute", "--model", "tiny.json", "--hardware", "hw.toml", *PLAN_ARGS,
                "--out", str(run / "plan.toml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = predicted_step(run / "plan.toml")
    # A run three times slower than planned (steps 1-2 slower still: start-up, left out).
    measured = [before * 10, before * 10] + [before * k for k in (2.9, 3.0, 3.1, 3.0)]
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"kind": "train", "step": i + 1, "step_time_s": t}) + "\n" for i, t in enumerate(measured)))
    r = run_cli("plan", "calibrate", str(run), "--out", "hw-cal.toml", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert abs(res["factor"] - 1 / 3.0) < 1e-9  # median of the 4 steady steps is 3.0x
    assert res["new_tflops"] < res["old_tflops"]
    r = run_cli("plan", "compute", "--model", "tiny.json", "--hardware", "hw-cal.toml", *PLAN_ARGS,
                "--out", "after.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    after = predicted_step(tmp_path / "after.toml")
    target = before * 3.0
    assert before < after <= target * 1.001
    assert abs(after - target) < abs(before - target) / 2


def test_calibrate_without_measurements_is_a_clean_error(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    r = run_cli("plan", "calibrate", str(run), cwd=tmp_path)
    assert r.returncode == 2 and "no plan.toml" in r.stderr and "Traceback" not in r.stderr
    (run / "plan.toml").write_text('[inputs]\nmodel = "m.json"\n\n[parallelism]\ndp = 1\n\n'
                                   '[predicted]\nstep_time_s = 0.5\ntokens_per_s = 1\ntflops_per_gpu = 1\n'
                                   'mfu = 0.1\nmemory_gb_per_gpu = 1\n')
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "step_time_s": 1.0}\n')
    r = run_cli("plan", "calibrate", str(run), "--out", str(tmp_path / "x.toml"), cwd=tmp_path)
    assert r.returncode == 2 and "no training steps after the first 2" in r.stderr
    assert not (tmp_path / "x.toml").exists()
