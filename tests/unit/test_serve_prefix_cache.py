"""Automatic prefix caching on a random tiny model: greedy outputs equal the plain
model's with and without it (every scheduler, chunked prompts, preemption, eviction);
a request sharing a prefix computes only the rest, counted token for token; a burst
sharing a header computes it once; cached blocks are never rewritten; failed requests
give their blocks back; prompt scoring (echo + logprobs) is not cut short by a hit;
arrivals and aborts mid-run in a small pool (preemption, eviction) change no answer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import servekit as K  # noqa: E402

torch = pytest.importorskip("torch")

from llmctl.serve import testhooks  # noqa: E402
from llmctl.serve.engine import Engine  # noqa: E402
from llmctl.serve.sequence import SamplingParams, Sequence  # noqa: E402

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
ONE = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)  # prompt only: its last token runs
BS = 4


@pytest.fixture(scope="module")
def model():
    return K.tiny_model(K.TINY_LLAMA)


def header_prompts(groups: int, per_group: int, header_len: int = 30, seed: int = 7):
    """`groups` headers, each followed by `per_group` different tails of 1-12 tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(groups):
        head = torch.randint(0, 384, (header_len,), generator=g).tolist()
        for _ in range(per_group):
            tail = torch.randint(0, 384, (int(torch.randint(1, 13, (1,), generator=g)),), generator=g).tolist()
            out.append(head + tail)
    return out


def reference(model, prompt, n):
    t = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            t = torch.cat([t, model(t)[:, -1].argmax(-1, keepdim=True)], 1)
    return t[0, len(prompt):].tolist()


def consistent(cache) -> None:
    """Nothing held at the end, and the cache's books balance."""
    assert cache.num_free == cache.num_blocks and not cache.refs
    assert len(cache.cached) == len(cache.hash_of) == len(cache.evictable)
    assert all(cache.hash_of[b] == h for h, b in cache.cached.items())
    assert not set(cache.free) & set(cache.evictable)


def run_waves(eng, prompts, params, waves=2):
    """Submit `prompts` in `waves` rounds, each run to the end, so later rounds can hit."""
    outs = []
    step = -(-len(prompts) // waves)
    for i in range(0, len(prompts), step):
        outs += eng.generate(prompts[i:i + step], params)
    return outs


@pytest.mark.parametrize("scheduler,budget,blocks", [
    ("vllm-like", 8192, None),
    ("vllm-like", 8, None),      # prompts chunked over several steps
    ("vllm-like", 64, 24),       # a pool too small: preemption, eviction
    ("fcfs", 8192, None),
    ("fcfs", 64, 30),
])
def test_greedy_outputs_are_the_same_with_and_without_prefix_caching(model, scheduler, budget, blocks):
    prompts = header_prompts(3, 4)
    refs = [reference(model, p, GREEDY.max_tokens) for p in prompts]
    outs = {}
    for on in (True, False):
        eng = Engine(model, scheduler=scheduler, max_batch_tokens=budget, block_size=BS, num_blocks=blocks,
                     prefix_caching=on)
        outs[on] = [o.output_ids for o in run_waves(eng, prompts, GREEDY)]
        consistent(eng.cache)
        if on:
            assert eng.stats["prefix_cache_hits"] > 0
        else:
            assert eng.stats["prefix_cache_hits"] == 0 and not eng.cache.cached
    assert outs[True] == outs[False] == refs


def test_a_request_sharing_a_prefix_computes_only_the_rest(model):
    head = list(range(10, 40))  # 30 tokens: 7 whole blocks of 4
    a, b = head + [1, 2, 3], head + [4, 5]
    eng = Engine(model, block_size=BS)
    eng.generate([a], ONE)
    assert eng.stats["computed_tokens"] == len(a)
    assert eng.stats["prefix_cache_hits"] == 0 and eng.stats["prefix_cache_queries"] == len(a)
    [out] = eng.generate([b], ONE)
    assert eng.stats["prefix_cache_hits"] == 28  # the header's whole blocks
    assert eng.stats["prefix_cache_queries"] == len(a) + len(b)
    assert eng.stats["computed_tokens"] == len(a) + len(b) - 28
    assert out.output_ids == reference(model, b, 1)
    # The same prompt again: all but its last token's block (it must run for the logits).
    eng.generate([b], ONE)
    assert eng.stats["prefix_cache_hits"] == 28 + (len(b) - 1) // BS * BS
    off = Engine(model, block_size=BS, prefix_caching=False)
    off.generate([a], ONE)
    off.generate([b], ONE)
    assert off.stats["computed_tokens"] == len(a) + len(b)
    assert off.stats["prefix_cache_queries"] == 0


def test_a_burst_sharing_a_header_computes_it_once(model):
    """All arrive together: the first computes the header, the rest wait one step and
    take it (without that, every one of them would compute it in the same step)."""
    prompts = header_prompts(1, 8)
    eng = Engine(model, block_size=BS)
    outs = eng.generate(prompts, ONE)
    assert [o.output_ids for o in outs] == [reference(model, p, 1) for p in prompts]
    shared = 30 // BS * BS
    assert eng.stats["prefix_cache_hits"] == 7 * shared
    assert eng.stats["computed_tokens"] == sum(map(len, prompts)) - 7 * shared
    consistent(eng.cache)


def test_cached_blocks_are_never_rewritten(model):
    prompts = header_prompts(2, 3)
    eng = Engine(model, block_size=BS, num_blocks=400)  # room for everything: nothing evicted
    eng.generate(prompts[:1], GREEDY)
    before = {h: (b, [k[b * BS:(b + 1) * BS].clone() for k in eng.cache.k + eng.cache.v])
              for h, b in eng.cache.cached.items()}
    assert before
    run_waves(eng, prompts[1:], GREEDY, waves=3)
    assert eng.stats["prefix_cache_hits"] > 0 and eng.cache.evictions == 0
    for h, (b, kv) in before.items():
        assert eng.cache.cached[h] == b
        assert all(torch.equal(now[b * BS:(b + 1) * BS], was) for now, was in zip(eng.cache.k + eng.cache.v, kv))


def test_eviction_under_block_pressure_keeps_outputs_right(model):
    """Six headers through a pool that holds about two: the least recently used blocks go,
    a header seen again after its eviction is computed again, outputs stay the plain model's."""
    prompts = header_prompts(6, 2, header_len=40)
    order = prompts + prompts[:4]  # the first headers again, after eviction
    eng = Engine(model, block_size=BS, num_blocks=30, max_batch_tokens=64)
    outs = [eng.generate([p], GREEDY)[0].output_ids for p in order]
    assert outs == [reference(model, p, GREEDY.max_tokens) for p in order]
    assert eng.cache.evictions > 0
    consistent(eng.cache)
    # A header used just now is still there: its second prompt hits the whole header.
    hits = eng.stats["prefix_cache_hits"]
    eng.generate([order[-1]], ONE)
    assert eng.stats["prefix_cache_hits"] - hits >= 40


def test_a_failed_request_gives_its_blocks_back_and_the_cache_stays_right(model):
    prompts = header_prompts(1, 3)
    eng = Engine(model, block_size=BS)
    testhooks.install(eng)
    eng.generate(prompts[:1], GREEDY)
    bad_forward = Sequence(prompts[1], SamplingParams(max_tokens=6, test_hook="fail-forward"))
    bad_step = Sequence(prompts[2], SamplingParams(max_tokens=6, temperature=0, test_hook="fail-step"))
    good = Sequence(prompts[2] + [9], GREEDY)
    for s in (bad_forward, bad_step, good):
        eng.add(s)
    eng.run_until_done()
    assert bad_forward.finish_reason == bad_step.finish_reason == "error"
    assert good.output_ids == reference(model, good.prompt_ids, GREEDY.max_tokens)
    consistent(eng.cache)
    # What the failed requests left cached is sound: the same prompts again, right answers.
    again = eng.generate(prompts, GREEDY)
    assert [o.output_ids for o in again] == [reference(model, p, GREEDY.max_tokens) for p in prompts]


def test_prompt_scoring_computes_the_whole_prompt_even_when_cached(model):
    """echo + logprobs needs every prompt position's logits: a hit would drop them."""
    prompt = list(range(50, 80))
    score = SamplingParams(max_tokens=0, echo=True, logprobs=1)
    plain = Engine(model, block_size=BS, prefix_caching=False).generate([prompt], score)[0]
    eng = Engine(model, block_size=BS)
    eng.generate([prompt], ONE)
    [scored] = eng.generate([prompt], score)
    assert sorted(scored.prompt_logprobs) == list(range(1, len(prompt)))
    for pos, (lp, top) in plain.prompt_logprobs.items():
        assert scored.prompt_logprobs[pos][0] == pytest.approx(lp, abs=1e-5)


def test_samples_of_one_prompt_and_the_prefix_cache_together(model):
    """n samples (sharing in the request) of a prompt whose header another request cached."""
    head = list(range(100, 132))
    eng = Engine(model, block_size=BS)
    eng.generate([head + [1]], ONE)
    seqs = [Sequence(head + [7, 8, 9, 10, 11], GREEDY) for _ in range(3)]
    for s in seqs[1:]:
        s.prompt_source = seqs[0]
    for s in seqs:
        eng.add(s)
    eng.run_until_done()
    assert [s.output_ids for s in seqs] == [reference(model, seqs[0].prompt_ids, GREEDY.max_tokens)] * 3
    assert eng.stats["prefix_cache_hits"] >= 32 and eng.stats["shared_prompt_tokens"] == 2 * 36
    consistent(eng.cache)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arrivals_and_aborts_mid_run_under_pressure(model, seed):
    """Requests from three headers arrive a few per step into a small pool while others
    run, some are aborted midway (their cached blocks shared by others): every answer
    that finishes equals the same request's answer without the cache."""
    import random

    rng = random.Random(seed)
    prompts = header_prompts(3, 8, header_len=20 + 4 * seed, seed=seed)
    rng.shuffle(prompts)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    want = [o.output_ids for o in Engine(model, block_size=BS, prefix_caching=False).generate(prompts, params)]
    eng = Engine(model, block_size=BS, num_blocks=36, max_batch_tokens=24)
    seqs = [Sequence(p, params) for p in prompts]
    pending, aborted = list(seqs), set()
    while pending or eng.has_work:
        for _ in range(rng.randint(0, 3)):
            if pending:
                eng.add(pending.pop(0))
        live = [s for s in eng.running if s.output_ids]
        if live and rng.random() < 0.15:
            victim = rng.choice(live)
            eng.abort(victim)
            aborted.add(victim.seq_id)
        eng.step()
    done = [(s, w) for s, w in zip(seqs, want) if s.seq_id not in aborted]
    assert all(s.output_ids == w for s, w in done)
    assert eng.stats["prefix_cache_hits"] > 0 and aborted
    assert eng.stats["preemptions"] > 0 or eng.cache.evictions > 0, "no pressure: the pool is too big"
    consistent(eng.cache)


def test_waiting_matches_do_not_starve_a_running_prompt(model):
    """A long prompt mid-way through its chunks needs nearly the whole pool while waiting
    requests hold the cached prefix blocks they matched: the engine gives those back
    instead of stepping with nothing to run (it used to spin on empty steps for ever)."""
    g = torch.Generator().manual_seed(5)
    shared = torch.randint(0, 384, (24,), generator=g).tolist()
    prompts = [(shared if i % 2 else []) + torch.randint(0, 384, (n,), generator=g).tolist()
               for i, n in enumerate([3, 40, 17, 150, 5, 64, 9, 100])]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    eng = Engine(model, block_size=4, num_blocks=48, max_batch_tokens=64)
    seqs = [Sequence(p, params) for p in prompts]
    for s in seqs:
        eng.add(s)
    for _ in range(500):
        if not eng.has_work:
            break
        eng.step()
    assert [len(s.output_ids) for s in seqs] == [12] * len(seqs)
    plain = Engine(model, block_size=4, prefix_caching=False).generate(prompts, params)
    assert [s.output_ids for s in seqs] == [s.output_ids for s in plain]
    assert eng.cache.num_free == eng.cache.num_blocks
