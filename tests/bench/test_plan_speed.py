"""Planner speed, end to end through the CLI (a benchmark, not a gate: `make bench`).

Target from issue #4: a 70B llama on 1024 GPUs and a 405B llama on 16384 GPUs each
plan in under 1 s on a 2-core login node; issue 17 adds the slow cases seen since:
GPU counts with a factor 3 (a 175B GPT on 384 A100s through --site slurm-a100-ib took
15.6 s with the default three alternatives) and others like it. The JSON's
solver.seconds is recorded as extra info so the growth with GPU count and depth can be
read off the report. Timing is never asserted here: this is a benchmark, not a gate.
"""

from __future__ import annotations

import json

import pytest

from llmctl.presets import model_fields

from conftest import run_cli

GPT_175B = dict(name="gpt-175b", template="gpt", layers=96, hidden=12288, heads=96, vocab_size=51200,
                max_seq_len=2048)  # GPT-3 175B (Brown et al. 2020, Table 2.1)
LLAMA_405B = dict(name="llama-405b", template="llama", layers=126, hidden=16384, heads=128, kv_heads=8,
                  ffn=53248, vocab_size=128256, max_seq_len=8192)  # Llama 3.1 405B (Dubey et al. 2024, Table 3)


H100, A100 = "slurm-h100-pyxis", "slurm-a100-ib"


@pytest.mark.parametrize("name,model,nodes,batch,seq,top,site,engine", [
    # the two targets
    ("70b-1024", model_fields("llama", "70b"), 128, 1024, 4096, 0, H100, "megatron"),
    ("405b-16384", LLAMA_405B, 2048, 2048, 8192, 0, H100, "megatron"),
    # growth with the GPU count (70B, batch = GPUs, at least 512)
    ("70b-64", model_fields("llama", "70b"), 8, 512, 4096, 0, H100, "megatron"),
    ("70b-128", model_fields("llama", "70b"), 16, 512, 4096, 0, H100, "megatron"),
    ("70b-8192", model_fields("llama", "70b"), 1024, 8192, 4096, 0, H100, "megatron"),
    # growth with depth (layers) at 1024 GPUs
    ("7b-1024", model_fields("llama", "7b"), 128, 1024, 4096, 0, H100, "megatron"),
    ("405b-1024", LLAMA_405B, 128, 1024, 8192, 0, H100, "megatron"),
    # with the default three alternatives
    ("70b-1024-top3", model_fields("llama", "70b"), 128, 1024, 4096, 3, H100, "megatron"),
    # awkward GPU counts (a factor 3), with the default three alternatives (issue 17)
    ("gpt175-384-a100-top3", GPT_175B, 48, 1536, 2048, 3, A100, "megatron"),
    ("gpt175-96-a100-top3", GPT_175B, 12, 1536, 2048, 3, A100, "megatron"),
    ("gpt175-1536-a100-top3", GPT_175B, 192, 1536, 2048, 3, A100, "megatron"),
    ("gpt175-768-h100-top3", GPT_175B, 96, 1536, 2048, 3, H100, "megatron"),
    ("70b-768-h100-top3", model_fields("llama", "70b"), 96, 1536, 4096, 3, H100, "megatron"),
    ("405b-12288-h100-top3", LLAMA_405B, 1536, 2304, 8192, 3, H100, "megatron"),
    # the other engines' mechanisms (issue 17: DeepSpeed's pipeline engine, FSDP's ZeRO-3)
    ("gpt175-384-a100-deepspeed-top3", GPT_175B, 48, 1536, 2048, 3, A100, "deepspeed"),
    ("70b-1024-fsdp-top3", model_fields("llama", "70b"), 128, 1024, 4096, 3, H100, "fsdp"),
])
def test_plan_speed(benchmark, tmp_path, name, model, nodes, batch, seq, top, site, engine):
    mpath = tmp_path / "m.json"
    mpath.write_text(json.dumps(model))
    args = ["plan", "compute", "--model", str(mpath), "--site", site, "--nodes", str(nodes),
            "--global-batch", str(batch), "--seq-len", str(seq), "--top", str(top), "--json", "--time-limit", "100", "--engine", engine]
    result = benchmark.pedantic(run_cli, args=args, kwargs={"timeout": 300}, rounds=1, iterations=1)
    assert result.returncode == 0, result.stderr
    solver = json.loads(result.stdout)["solver"]
    benchmark.extra_info.update(solver)
