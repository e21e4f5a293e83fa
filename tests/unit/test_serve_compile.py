"""Serving's `compile` switch (ServeConfig): the engine with each block's dense parts under
torch.compile (dynamic batch sizes) gives the eager engine's greedy tokens alone and in a
batch, with chunked prompts; refused with tensor-parallel ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import servekit as K  # noqa: E402

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("spec", [K.TINY_LLAMA, K.TINY_GPT], ids=["llama", "gpt"])
def test_compiled_engine_matches_eager(spec):
    from llmctl.serve.engine import Engine
    from llmctl.serve.sequence import SamplingParams

    model = K.tiny_model(spec)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (3, 17, 40, 9, 25)]
    greedy = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    outs = {}
    for compiled in (False, True):
        # a small step budget: prompts arrive in chunks beside decodes (mixed steps)
        eng = Engine(model, max_batch_tokens=32, compile=compiled)
        assert eng.runner.compiled is compiled
        outs[compiled] = [[s.output_ids for s in eng.generate([p], greedy)][0] for p in prompts[:2]]
        outs[compiled].append([s.output_ids for s in eng.generate(prompts, greedy)])
    assert outs[True] == outs[False]
    assert counters["stats"]["unique_graphs"] >= 2  # the compiled path really ran


def test_compile_refused_with_tensor_parallel_ranks(tmp_path):
    from llmctl.config.serve import ServeConfig
    from llmctl.errors import LlmctlError
    from llmctl.serve.start import build_engine

    settings = ServeConfig(artifact=str(tmp_path), compile=True)
    with pytest.raises(LlmctlError, match="compile = true is not supported with 2 tensor-parallel ranks"):
        build_engine(settings, str(tmp_path), shard=(0, 2))
