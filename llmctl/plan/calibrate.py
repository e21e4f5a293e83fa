"""`llmctl plan calibrate`: fit a hardware profile's efficiency from real training runs.

Each run folder holds the plan it ran (`plan.toml`, with `[predicted] step_time_s`)
and its measurements (`metrics.jsonl`, a `step_time_s` per logged step). The
planner's compute term is FLOPs / (peak x sustained); if runs take k times as long
as predicted, the sustained rate the cluster really delivers is the planned one / k.
The fit is the median over runs of predicted/measured (each run's median step
after the first `skip` steps, which pay for start-up and allocator warm-up), and it
is written where the planner reads a sustained rate: the profile's
`measured.matmul_tflops_bf16` (GPU nodes) or `matmul_tflops_fp32` (CPU nodes).
Communication is folded into the same factor: a first-order fit, not a new model.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmctl.errors import LlmctlError


@dataclass
class RunFit:
    run: str
    predicted_s: float
    measured_s: float
    steps: int

    @property
    def ratio(self) -> float:
        return self.predicted_s / self.measured_s


def read_run(run_dir: str | Path, skip: int = 2) -> RunFit:
    """One run's predicted and measured (median) step time; clear errors for what is missing."""
    from llmctl.config.base import load_config
    from llmctl.config.plan import PlanFile

    run = Path(run_dir)
    plan_path, metrics = run / "plan.toml", run / "metrics.jsonl"
    if not plan_path.is_file():
        raise LlmctlError(f"{run}: no plan.toml (only runs launched from a plan can be calibrated against)")
    plan = load_config(plan_path, PlanFile)
    if plan.predicted is None or plan.predicted.step_time_s <= 0:
        raise LlmctlError(f"{plan_path}: predicted.step_time_s: missing; recompute the plan with `llmctl plan compute`")
    times = []
    if metrics.is_file():
        for n, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise LlmctlError(f"{metrics}: line {n}: not JSON") from None
            if rec.get("kind") == "train" and rec.get("step", 0) > skip and rec.get("step_time_s"):
                times.append(float(rec["step_time_s"]))
    if not times:
        raise LlmctlError(f"{metrics}: no training steps after the first {skip} to measure",
                          hint="let the run train a few more steps (log_interval = 1 gives one time per step)")
    return RunFit(str(run), plan.predicted.step_time_s, statistics.median(times), len(times))


def hardware_of(fits_runs: list[str]) -> Optional[str]:
    """The hardware profile the first run's plan was made with, if it still exists."""
    from llmctl.config.base import load_config
    from llmctl.config.plan import PlanFile

    for run in fits_runs:
        plan = load_config(Path(run) / "plan.toml", PlanFile)
        if plan.inputs.hardware:
            for base in (Path(run), *Path(run).absolute().parents):
                if (base / plan.inputs.hardware).is_file():
                    return str(base / plan.inputs.hardware)
    return None


def calibrate(run_dirs: list[str], hardware: Optional[str] = None, out: Optional[str] = None,
              skip: int = 2) -> dict:
    """Fit the factor; with `out`, write the calibrated profile there (atomically)."""
    from llmctl.config.base import load_config
    from llmctl.config.hardware import HardwareProfile
    from llmctl.plan.cluster import build_cluster

    if out:
        from llmctl.hw.profile import check_writable

        check_writable(out)
    fits = [read_run(r, skip) for r in run_dirs]
    factor = statistics.median(f.ratio for f in fits)
    result = {"runs": [{"run": f.run, "predicted_step_s": f.predicted_s, "measured_step_s": f.measured_s,
                        "steps": f.steps, "predicted_over_measured": f.ratio} for f in fits],
              "factor": factor, "hardware": None, "key": None, "old_tflops": None, "new_tflops": None,
              "written": None}
    hardware = hardware or hardware_of(run_dirs)
    if hardware is None:
        return result
    profile = load_config(hardware, HardwareProfile)
    cluster = build_cluster(profile, profile_path=hardware)
    key = "matmul_tflops_bf16" if profile.gpu.count else "matmul_tflops_fp32"
    # Per GPU on a GPU node; per node on a CPU node (the planner divides it among ranks).
    old = cluster.peak_flops * cluster.sustained / 1e12
    new = old * factor
    result.update(hardware=hardware, key=key, old_tflops=old, new_tflops=new)
    if out:
        from llmctl.hw.profile import format_for, write_profile

        data = profile.to_data()
        data["measured"] = {**data.get("measured", {}), key: new}
        data["notes"] = [*data.get("notes", []),
                         f"measured.{key} calibrated by `llmctl plan calibrate` from {len(fits)} run(s): "
                         f"x{factor:.3f} of {old:.4g} TFLOP/s"]
        write_profile(data, out, format_for(out, None))
        result["written"] = out
    return result
