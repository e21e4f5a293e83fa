"""Planner speed, end to end through the CLI (a benchmark, not a gate: `make bench`).

Target from issue #4: a 70B llama on 1024 GPUs and a 405B llama on 16384 GPUs each
plan in under 1 s on a 2-core login node. The JSON's solver.seconds is recorded
as extra info so the growth with GPU count and depth can be read off the report.
"""

from __future__ import annotations

import json

import pytest

from llmctl.presets import model_fields

from conftest import run_cli

LLAMA_405B = dict(name="llama-405b", template="llama", layers=126, hidden=16384, heads=128, kv_heads=8,
                  ffn=53248, vocab_size=128256, max_seq_len=8192)  # Llama 3.1 405B (Dubey et al. 2024, Table 3)


@pytest.mark.parametrize("name,model,nodes,batch,seq", [
    ("70b-1024", model_fields("llama", "70b"), 128, 1024, 4096),
    ("405b-16384", LLAMA_405B, 2048, 2048, 8192),
    ("70b-128", model_fields("llama", "70b"), 16, 512, 4096),
])
def test_plan_speed(benchmark, tmp_path, name, model, nodes, batch, seq):
    mpath = tmp_path / "m.json"
    mpath.write_text(json.dumps(model))
    args = ["plan", "compute", "--model", str(mpath), "--site", "slurm-h100-pyxis", "--nodes", str(nodes),
            "--global-batch", str(batch), "--seq-len", str(seq), "--top", "0", "--json", "--time-limit", "100"]
    result = benchmark.pedantic(run_cli, args=args, kwargs={"timeout": 300}, rounds=1, iterations=1)
    assert result.returncode == 0, result.stderr
    solver = json.loads(result.stdout)["solver"]
    benchmark.extra_info.update(solver)
