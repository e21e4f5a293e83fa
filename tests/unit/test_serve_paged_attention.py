"""Serving's paged attention paths (ServeConfig `paged_attention`): decode attention read
from the KV pool block by block (llmctl.serve.paged) equals attention over the gathered
keys, alone and through the engine: the same logits within 1e-5 and the same greedy
tokens across batch sizes, context lengths, grouped-query heads, block sizes, segments
of one block or many, with prefix caching, shared sample blocks, chunked prompts and
preemption; GPT-2's per-layer attention scale is honoured by both paths."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import servekit as K  # noqa: E402

torch = pytest.importorskip("torch")

from llmctl.serve import paged  # noqa: E402
from llmctl.serve.engine import Engine, paged_attention_for  # noqa: E402
from llmctl.serve.sequence import SamplingParams  # noqa: E402


def _reference(q, k_pool, v_pool, tables, lens, bs, scale):
    """Each sequence's keys gathered slot by slot, then a plain softmax, in float64."""
    out = []
    H, kvh = q.shape[1], k_pool.shape[1]
    for b in range(q.shape[0]):
        slots = [tables[b][p // bs] * bs + p % bs for p in range(lens[b])]
        k = k_pool[slots].double().repeat_interleave(H // kvh, dim=1)  # (L, H, d)
        v = v_pool[slots].double().repeat_interleave(H // kvh, dim=1)
        att = torch.einsum("hd,lhd->hl", q[b].double(), k) * scale
        out.append(torch.einsum("hl,lhd->hd", att.softmax(-1), v).reshape(-1))
    return torch.stack(out)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("segment", ["one block", "whole context"])
def test_paged_decode_equals_gathered_softmax(monkeypatch, heads, kv_heads, segment):
    if segment == "one block":
        monkeypatch.setattr(paged, "SEGMENT_BYTES", 1)  # every block its own segment
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    bs, d, num_blocks = 4, 8, 64
    k_pool = torch.randn(num_blocks * bs, kv_heads, d, generator=g)
    v_pool = torch.randn(num_blocks * bs, kv_heads, d, generator=g)
    lens = [1, 4, 5, 37, 13, 64]
    nblk = -(-max(lens) // bs)
    perm = torch.randperm(num_blocks, generator=g).tolist()  # blocks scattered over the pool
    tables = [[perm.pop() for _ in range(-(-n // bs))] for n in lens]
    padded = torch.tensor([t + [0] * (nblk - len(t)) for t in tables])
    q = torch.randn(len(lens), heads, d, generator=g)
    scale = 0.3
    got = paged.paged_decode(q, k_pool, v_pool, padded, torch.tensor(lens), bs, scale)
    want = _reference(q, k_pool, v_pool, tables, lens, bs, scale)
    assert got.shape == (len(lens), heads * d) and got.dtype == q.dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    default = paged.paged_decode(q, k_pool, v_pool, padded, torch.tensor(lens), bs)  # 1/sqrt(d)
    torch.testing.assert_close(default.double(), _reference(q, k_pool, v_pool, tables, lens, bs, 1 / math.sqrt(d)),
                               rtol=1e-5, atol=1e-5)


def test_paged_decode_bf16_accumulates_in_fp32():
    g = torch.Generator().manual_seed(1)
    k_pool, v_pool = (torch.randn(32 * 4, 2, 8, generator=g) for _ in range(2))
    q = torch.randn(3, 4, 8, generator=g)
    tables, lens = torch.tensor([[0, 1, 2], [5, 6, 0], [9, 0, 0]]), torch.tensor([12, 6, 1])
    full = paged.paged_decode(q, k_pool, v_pool, tables, lens, 4)
    half = paged.paged_decode(q.bfloat16(), k_pool.bfloat16(), v_pool.bfloat16(), tables, lens, 4)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, rtol=3e-2, atol=3e-2)


def _decode_logits(model, prompts, block_size, steps=3, **kw):
    """Logits of one decode step of every prompt (after `steps` engine steps), from each path
    over the very same cache state."""
    eng = Engine(model, block_size=block_size, paged_attention="gather", **kw)
    eng.generate([prompts[0]], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))  # prefix cache
    from llmctl.serve.sequence import Sequence

    seqs = [Sequence(p, SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)) for p in prompts]
    for s in seqs:
        eng.add(s)
    for _ in range(steps):
        eng.step()
    chunks = [(s, 1) for s in eng.running if s.num_computed == len(s.tokens) - 1]
    assert len(chunks) == len(prompts)
    for s, _ in chunks:  # the scheduler's part: room for the token this step writes
        assert eng.cache.reserve(s, s.num_computed + 1)
    out = {}
    with torch.no_grad():
        for mode in ("gather", "blockwise"):
            eng.runner.attention = mode
            out[mode] = eng.runner.forward(chunks)
    return out


@pytest.mark.parametrize("spec", [K.TINY_LLAMA, K.TINY_GPT], ids=["llama-gqa", "gpt"])
@pytest.mark.parametrize("batch,block_size", [(1, 4), (7, 4), (30, 16)])
def test_decode_logits_match_gather(spec, batch, block_size):
    model = K.tiny_model(spec)
    g = torch.Generator().manual_seed(batch)
    lens = torch.randint(1, 200, (batch,), generator=g).tolist()
    prompts = [torch.randint(0, 384, (n,), generator=g).tolist() for n in lens]
    out = _decode_logits(model, prompts, block_size)
    torch.testing.assert_close(out["blockwise"], out["gather"], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(5)
    lens = [3, 40, 17, 150, 5, 64, 9, 100]
    shared = torch.randint(0, 384, (24,), generator=g).tolist()  # a common prefix: the prefix cache hits
    return [(shared if i % 2 else []) + torch.randint(0, 384, (n,), generator=g).tolist()
            for i, n in enumerate(lens)]


GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("kw", [
    dict(block_size=4),                                   # everything in one step, many blocks
    dict(block_size=16, max_batch_tokens=24),             # chunked prompts beside decodes
    dict(block_size=4, num_blocks=48, max_batch_tokens=64),  # pool short: preemption
    dict(block_size=8, prefix_caching=False),
    dict(block_size=4, scheduler="fcfs"),
], ids=["one-step", "chunked", "preempted", "no-prefix-cache", "fcfs"])
def test_engine_greedy_tokens_match(prompts, kw):
    model = K.tiny_model(K.TINY_LLAMA)
    outs, engines = {}, {}
    for mode in ("gather", "blockwise"):
        eng = engines[mode] = Engine(model, paged_attention=mode, **kw)
        assert eng.runner.attention == mode
        outs[mode] = [o.output_ids for o in eng.generate(prompts, GREEDY)]
        assert eng.cache.num_free == eng.cache.num_blocks
    assert outs["blockwise"] == outs["gather"]
    if "num_blocks" in kw:
        assert engines["blockwise"].stats["preemptions"] > 0
    if kw.get("prefix_caching", True):
        assert engines["blockwise"].stats["prefix_cache_hits"] > 0


def test_samples_sharing_prompt_blocks_match(prompts):
    """n samples of each prompt (seeded): the later ones take the first one's prompt blocks."""
    from llmctl.serve.sequence import Sequence

    model = K.tiny_model(K.TINY_LLAMA)
    got = {}
    for mode in ("gather", "blockwise"):
        eng = Engine(model, block_size=4, paged_attention=mode)
        seqs = []
        for p in prompts[:4]:
            first = None
            for i in range(3):
                s = Sequence(p, SamplingParams(max_tokens=8, temperature=1.0, seed=i, ignore_eos=True))
                s.prompt_source = first
                first = first or s
                seqs.append(s)
                eng.add(s)
        eng.run_until_done()
        assert eng.stats["shared_prompt_tokens"] > 0
        got[mode] = [s.output_ids for s in seqs]
    assert got["blockwise"] == got["gather"]


@pytest.mark.parametrize("mode", ["gather", "blockwise"])
def test_gpt2_layer_scale_honoured(mode):
    """scale_attn_by_inverse_layer_idx (attn_layer_scale): block i's scores also / (i+1)."""
    model = K.tiny_model({**K.TINY_GPT, "attn_layer_scale": True})
    prompts = [[5, 6, 7], list(range(30, 90))]
    outs = Engine(model, block_size=4, paged_attention=mode).generate(
        prompts, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    want = []
    for p in prompts:
        t = torch.tensor([p])
        with torch.no_grad():
            for _ in range(8):
                t = torch.cat([t, model(t)[:, -1].argmax(-1, keepdim=True)], 1)
        want.append(t[0, len(p):].tolist())
    assert [o.output_ids for o in outs] == want


def test_mode_resolution_and_refusals():
    from pydantic import ValidationError

    from llmctl.config.serve import ServeConfig

    assert paged_attention_for("auto", torch.device("cpu")) == "auto"  # by context, in the runner
    assert paged_attention_for("auto", torch.device("cuda", 0)) == "gather"
    assert paged_attention_for("gather", torch.device("cpu")) == "gather"
    assert ServeConfig().paged_attention == "auto"
    with pytest.raises(ValidationError, match="paged_attention"):
        ServeConfig(paged_attention="inplace")
    with pytest.raises(ValueError, match="paged attention 'inplace'"):
        Engine(K.tiny_model(K.TINY_LLAMA), paged_attention="inplace")


@pytest.mark.parametrize("threshold,expect_blockwise", [(10 ** 6, False), (60, True)])
def test_auto_picks_by_context(monkeypatch, prompts, threshold, expect_blockwise):
    """CPU "auto": decode groups whose longest context reaches BLOCKWISE_FROM (and whose copy
    reaches BLOCKWISE_BYTES, here 0) read blockwise, the others gather; the tokens are the
    gather path's either way."""
    from llmctl.serve import runner

    monkeypatch.setattr(runner, "BLOCKWISE_FROM", threshold)
    monkeypatch.setattr(runner, "BLOCKWISE_BYTES", 0)
    calls = []
    real = paged.paged_decode
    monkeypatch.setattr(paged, "paged_decode", lambda q, *a, **kw: calls.append(q.shape[0]) or real(q, *a, **kw))
    model = K.tiny_model(K.TINY_LLAMA)
    batch = prompts * 2  # 16 decodes: two groups by context length (runner.DECODE_BUCKETS)
    want = [o.output_ids for o in Engine(model, block_size=4, paged_attention="gather").generate(batch, GREEDY)]
    eng = Engine(model, block_size=4)
    assert eng.runner.attention == "auto"
    assert [o.output_ids for o in eng.generate(batch, GREEDY)] == want
    assert bool(calls) is expect_blockwise
    if expect_blockwise:  # only the long groups' rows: the short ones gathered
        assert max(calls) < len(batch)


def test_auto_needs_a_large_copy_too(monkeypatch):
    from llmctl.serve import runner
    from llmctl.serve.sequence import Sequence

    eng = Engine(K.tiny_model(K.TINY_LLAMA), block_size=4)  # kv_heads 2 x head_dim 16, fp32: 128 B a key
    seqs = []
    for n in (1500, 20):
        s = Sequence([1] * n, GREEDY)
        s.num_computed = n - 1
        seqs.append((s, 1))
    assert not eng.runner._blockwise(seqs)  # 2 x 1,500 keys x 128 B: 384 KB, under 4 MiB
    monkeypatch.setattr(runner, "BLOCKWISE_BYTES", 300_000)
    assert eng.runner._blockwise(seqs)
    assert not eng.runner._blockwise(seqs[1:])  # 20 tokens: under BLOCKWISE_FROM
