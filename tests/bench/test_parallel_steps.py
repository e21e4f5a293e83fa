"""Step time of each parallel layout on this machine (2 gloo ranks on CPU, tiny llama).

Not a speed target on CPUs (gloo over loopback, 2 cores); it shows what each layout
costs relative to the others and catches a layout that suddenly syncs far more.

    python -m pytest -q tests/bench/test_parallel_steps.py --benchmark-enable -s
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_parallel_equivalence import torchrun  # noqa: E402

pytest.importorskip("torch")

LAYOUTS = {"ddp": {"dp": 2}, "fsdp2": {"dp": 2, "dp_mode": "fsdp"},
           "zero3": {"dp": 2, "dp_mode": "zero", "zero_stage": 3}, "tp2": {"tp": 2},
           "tp2_sp": {"tp": 2, "sequence_parallel": True}, "pp2": {"pp": 2}}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_parallel_step_time(benchmark, tmp_path, name):
    import torch

    layout = {**LAYOUTS[name], "steps": 12, "val": False}
    benchmark.pedantic(torchrun, args=(tmp_path, 2, {name: layout}), rounds=1, iterations=1)
    res = torch.load(tmp_path / f"{name}.rank0.pt")
    steady = res["step_s"][2:]  # the first steps build buckets, shard and warm the allocator
    benchmark.extra_info["median_step_ms"] = 1000 * statistics.median(steady)
    print(f"\n{name}: median step {1000 * statistics.median(steady):.1f} ms over {len(steady)} steps")
    assert len(res["losses"]) == 12
