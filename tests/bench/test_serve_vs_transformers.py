"""The engine's continuous batching against Hugging Face `transformers` generate on the
same exported artifact and the same requests: 1 request, and 64 requests with mixed
prompt lengths and long-tailed max_tokens (80 % want 8-32 tokens, 20 % 160-200), greedy.
transformers runs the 64 as one left-padded batch to the longest max_tokens (static
batching: what `generate` offers) and each answer is cut to its own max_tokens; the
engine runs them as they come and go. Repetitions alternate engine / transformers;
outputs are compared token for token. Reported in extra_info: requested tokens/s of
each (median), the ratio and how many answers matched. Run with `make bench`; not a
pass/fail gate on speed."""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPEATS = 5


# One intra-op thread unless told otherwise: on a small machine shared with other work,
# torch's default (every core) oversubscribes it and the timings measure the contention.
THREADS = int(os.environ.get("LLMCTL_BENCH_THREADS", "1"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def requests(n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens); prompt + max_tokens fit the tiny model's 256 context."""
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(8, 48))],
             rng.randint(8, 32) if rng.random() < 0.8 else rng.randint(160, 200)) for _ in range(n)]


def engine_run(art, reqs) -> list[list[int]]:
    from llmctl.serve.engine import Engine
    from llmctl.serve.sequence import SamplingParams, Sequence

    eng = Engine.from_artifact(art)
    seqs = [Sequence(p, SamplingParams(max_tokens=m, temperature=0, ignore_eos=True)) for p, m in reqs]
    for s in seqs:
        eng.add(s)
    eng.run_until_done()
    return [s.output_ids for s in seqs]


def hf_run(model, reqs) -> list[list[int]]:
    width = max(len(p) for p, _ in reqs)
    ids = torch.zeros(len(reqs), width, dtype=torch.long)
    mask = torch.zeros(len(reqs), width, dtype=torch.long)
    for i, (p, _) in enumerate(reqs):  # left padding: every row's last prompt token in the last column
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=max(m for _, m in reqs), pad_token_id=0)
    return [out[i, width:width + m].tolist() for i, (_, m) in enumerate(reqs)]


@pytest.mark.parametrize("n", [1, 64])
def test_engine_vs_transformers_generate(benchmark, artifact, n):
    from llmctl.export.hf import load_artifact

    art = load_artifact(str(artifact), dtype="fp32", device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(artifact), dtype=torch.float32).eval()
    # No eos, as the engine's ignore_eos: a row that chose eos would be padded from there on
    # (and min_new_tokens would ban eos instead: the second choice where the first is eos).
    hf.generation_config.eos_token_id = None
    reqs = requests(n, art.model.cfg.vocab_size)
    wanted = sum(m for _, m in reqs)
    engine_run(art, reqs[:2])  # warm-up both
    hf_run(hf, reqs[:2])
    times = {"engine": [], "transformers": []}
    outs = {}

    def interleaved():
        for _ in range(REPEATS):
            for name, fn in (("engine", lambda: engine_run(art, reqs)), ("transformers", lambda: hf_run(hf, reqs))):
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)

    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    matched = sum(a == b for a, b in zip(outs["engine"], outs["transformers"]))
    eng_tps = wanted / statistics.median(times["engine"])
    hf_tps = wanted / statistics.median(times["transformers"])
    info = {"requests": n, "requested_tokens": wanted, "repeats": REPEATS,
            "engine_tokens_per_s": round(eng_tps, 1), "transformers_tokens_per_s": round(hf_tps, 1),
            "ratio": round(eng_tps / hf_tps, 2), "greedy_outputs_matching": f"{matched}/{n}",
            "threads": torch.get_num_threads(), "transformers": transformers.__version__}
    benchmark.extra_info.update(info)
    print(f"\nengine vs transformers generate: {info}")
    assert matched == n, "greedy outputs differ between the engine and transformers"
