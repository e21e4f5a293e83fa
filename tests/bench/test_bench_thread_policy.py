"""torch's default thread count against llmctl's thread policy (llmctl/hw/threads.py) on a
loaded node: a job given fewer CPUs than the node has (SLURM_CPUS_PER_TASK, here 1 of the
machine's cores, not enforced by binding, as on a shared login node or a node split between
jobs without task affinity) while other work keeps the node's other cores busy
(busy-loop processes, tests/conftest.py's `spinning`).

Two workloads, each in a fresh process: greedy decode of one request through the serve
engine on the tiny artifact (tokens/s), and training steps of the tiny llama (forward,
backward, AdamW; steps/s). Each is measured with torch's default (one thread per core of
the machine) and with the policy, interleaved over repetitions in one run, at two loads:
the node's other cores busy, and every core busy. Figures go to extra_info and stdout;
not a pass/fail gate on speed. Run with `make bench`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

pytest.importorskip("torch")
REPS, SECONDS = 3, 4.0
JOB_CPUS = 1  # what the scheduler gave the measured job


def decode(artifact: str, seconds: float) -> float:
    """Greedy tokens/s of one request at a time through the engine (the decode loop)."""
    import torch

    from llmctl.export.hf import load_artifact
    from llmctl.serve.engine import Engine
    from llmctl.serve.sequence import SamplingParams, Sequence

    art = load_artifact(artifact, dtype="fp32", device="cpu")
    eng = Engine.from_artifact(art, max_batch_tokens=512)
    prompt = art.tokenizer.encode("def f(x):\n    return").ids
    toks, t0 = 0, time.monotonic()
    with torch.inference_mode():
        while time.monotonic() - t0 < seconds:
            s = Sequence(prompt, SamplingParams(max_tokens=64, temperature=0, ignore_eos=True))
            eng.add(s)
            while not s.finished:
                eng.step()
            toks += len(s.output_ids)
    return toks / (time.monotonic() - t0)


def train_steps(seconds: float) -> float:
    """Optimizer steps/s of the tiny llama on batches of 8 x 128 tokens."""
    import torch

    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(**K.TINY_LLAMA))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, K.TINY_LLAMA["vocab_size"], (8, 129))
    steps, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return steps / (time.monotonic() - t0)


def child(mode: str, what: str, artifact: str, seconds: float) -> dict:
    import torch

    if mode == "policy":
        from llmctl.hw.threads import apply

        n, why = apply(None, "")
    else:
        n, why = torch.get_num_threads(), "torch's default"
    rate = decode(artifact, seconds) if what == "decode" else train_steps(seconds)
    return {"threads": n, "why": why, "rate": rate}


def measure(mode: str, what: str, artifact: Path) -> dict:
    env = dict(os.environ, SLURM_CPUS_PER_TASK=str(JOB_CPUS), TOKENIZERS_PARALLELISM="false")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        env.pop(var, None)  # torch's default is what a job gets when nobody sets them
    r = subprocess.run([sys.executable, __file__, mode, what, str(artifact), str(SECONDS)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


@pytest.mark.parametrize("what", ["decode", "train"])
@pytest.mark.parametrize("busy", ["other-cores", "all-cores"])
def test_thread_policy_on_a_loaded_node(benchmark, artifact, what, busy):
    from conftest import spinning

    cores = len(os.sched_getaffinity(0))
    load = cores - JOB_CPUS if busy == "other-cores" else cores

    def run():
        got = {"default": [], "policy": []}
        with spinning(load):
            for _ in range(REPS):  # interleaved: drift in the machine's load hits both alike
                for mode in got:
                    got[mode].append(measure(mode, what, artifact))
        return got

    got = benchmark.pedantic(run, rounds=1, iterations=1)
    unit = "tokens/s" if what == "decode" else "steps/s"
    stats = {"cores": cores, "spinners": load, "job_cpus": JOB_CPUS, "unit": unit}
    for mode, runs in got.items():
        stats[f"{mode}_threads"] = runs[0]["threads"]
        stats[f"{mode}_{unit}"] = [round(r["rate"], 2) for r in runs]
        stats[f"{mode}_median"] = round(statistics.median(r["rate"] for r in runs), 2)
    stats["ratio_policy_over_default"] = round(stats["policy_median"] / stats["default_median"], 2)
    benchmark.extra_info.update(stats)
    print(f"\n{what}, {busy} busy: {stats}")
    assert stats["policy_threads"] == JOB_CPUS  # the policy read the job's CPUs


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))))
