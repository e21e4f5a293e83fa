"""The engine on a random tiny model: greedy output equals the plain model's greedy
decoding whether a request runs alone or in a batch, under each scheduler, with
chunked prompts and with preemption; sampling settings; scheduler plugins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import servekit as K  # noqa: E402

torch = pytest.importorskip("torch")

from llmctl.errors import LlmctlError  # noqa: E402
from llmctl.serve.engine import Engine  # noqa: E402
from llmctl.serve.sequence import SamplingParams  # noqa: E402

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    return K.tiny_model(K.TINY_LLAMA)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    lens = torch.randint(2, 40, (6,), generator=g).tolist()
    return [torch.randint(0, 384, (n,), generator=g).tolist() for n in lens]


def reference(model, prompt, n):
    """Greedy decoding by re-running the whole sequence each token (no cache at all)."""
    t = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            t = torch.cat([t, model(t)[:, -1].argmax(-1, keepdim=True)], 1)
    return t[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def refs(model, prompts):
    return [reference(model, p, GREEDY.max_tokens) for p in prompts]


@pytest.mark.parametrize("scheduler,budget,blocks", [
    ("vllm-like", 8192, None),   # everything in one step
    ("vllm-like", 16, None),     # long prompts chunked over several steps
    ("vllm-like", 64, 16),       # KV pool too small for all: preemption by recomputation
    ("fcfs", 8192, None),
    ("fcfs", 64, 20),            # static batches limited by the pool
])
def test_greedy_batch_equals_alone(model, prompts, refs, scheduler, budget, blocks):
    eng = Engine(model, scheduler=scheduler, max_batch_tokens=budget, block_size=4, num_blocks=blocks)
    outs = eng.generate(prompts, GREEDY)
    assert [o.output_ids for o in outs] == refs
    assert all(o.finish_reason == "length" for o in outs)
    assert eng.cache.num_free == eng.cache.num_blocks  # every block returned
    if blocks == 16:
        assert eng.stats["preemptions"] > 0
    alone = Engine(model, scheduler=scheduler, max_batch_tokens=budget, block_size=4, num_blocks=blocks)
    assert alone.generate([prompts[-1]], GREEDY)[0].output_ids == refs[-1]


def test_gpt_template_too():
    model = K.tiny_model(K.TINY_GPT)
    prompts = [[5, 6, 7], list(range(30, 60))]
    outs = Engine(model, block_size=8).generate(prompts, GREEDY)
    assert [o.output_ids for o in outs] == [reference(model, p, 8) for p in prompts]


def test_sampling_seed_top_k_and_stop(model, prompts):
    eng = Engine(model)
    a = eng.generate([prompts[0]], SamplingParams(max_tokens=10, temperature=1.0, seed=5, ignore_eos=True))[0]
    b = eng.generate([prompts[0]], SamplingParams(max_tokens=10, temperature=1.0, seed=5, ignore_eos=True))[0]
    c = eng.generate([prompts[0]], SamplingParams(max_tokens=10, temperature=1.0, seed=6, ignore_eos=True))[0]
    assert a.output_ids == b.output_ids != c.output_ids
    k1 = eng.generate([prompts[0]], SamplingParams(max_tokens=10, temperature=1.5, top_k=1, ignore_eos=True))[0]
    p0 = eng.generate([prompts[0]], SamplingParams(max_tokens=10, temperature=1.5, top_p=1e-9,
                                                   ignore_eos=True))[0]
    greedy = eng.generate([prompts[0]], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    assert k1.output_ids == p0.output_ids == greedy.output_ids


def test_stop_string_and_eos(tmp_path, model):
    from llmctl.export.hf import load_artifact

    art = load_artifact(K.tiny_artifact(tmp_path))
    eng = Engine.from_artifact(art)
    ids = art.tokenizer.encode("def main(argv):").ids
    full = eng.generate([ids], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))[0]
    assert len(full.text) > 4
    stop = full.text[2:4]
    cut = eng.generate([ids], SamplingParams(max_tokens=20, temperature=0, stop=[stop], ignore_eos=True))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.find(stop)]
    # eos ends a request when it is the greedy choice: make it so by making it the first output
    eng.eos_id = full.output_ids[0]
    e = eng.generate([ids], SamplingParams(max_tokens=20, temperature=0))[0]
    assert e.finish_reason == "stop" and e.output_ids == [full.output_ids[0]] and e.text == ""


def test_unfit_request_is_refused(model):
    eng = Engine(model, block_size=4, num_blocks=4)
    with pytest.raises(ValueError, match="KV cache"):
        eng.generate([[1] * 10], SamplingParams(max_tokens=20))


def test_unknown_scheduler_lists_the_known_ones(model):
    with pytest.raises(LlmctlError, match="vllm-like"):
        Engine(model, scheduler="nope")


PLUGIN = '''
class Reverse:
    """Admit the newest waiting request first; no chunking."""
    calls = 0
    def schedule(self, state):
        Reverse.calls += 1
        out = [(s, 1) for s in state.running if s.remaining == 1]
        if state.waiting:
            s = state.waiting.pop()
            state.cache.reserve(s, len(s.tokens) + s.params.max_tokens)
            state.running.append(s)
            out.append((s, s.remaining))
        return out
'''


def test_plugin_scheduler_from_entry_point(tmp_path, monkeypatch, model, prompts, refs):
    (tmp_path / "my_sched.py").write_text(PLUGIN)
    dist = tmp_path / "my_sched-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-sched\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[llmctl.serve.schedulers]\nreverse = my_sched:Reverse\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eng = Engine(model, scheduler="reverse")
    outs = eng.generate(prompts[:4], GREEDY)
    assert [o.output_ids for o in outs] == refs[:4]
    import my_sched

    assert my_sched.Reverse.calls >= GREEDY.max_tokens


def test_greedy_batch_equals_alone_with_bucketed_decodes(model):
    """Enough concurrent decodes (>= 16) that the runner splits them into groups by context
    length: each request's greedy output still equals running it alone without a cache."""
    g = torch.Generator().manual_seed(5)
    lens = torch.randint(2, 60, (20,), generator=g).tolist()
    ps = [torch.randint(0, 384, (n,), generator=g).tolist() for n in lens]
    eng = Engine(model, scheduler="vllm-like", max_batch_tokens=8192, block_size=4)
    outs = eng.generate(ps, GREEDY)
    assert [o.output_ids for o in outs] == [reference(model, p, GREEDY.max_tokens) for p in ps]


def test_penalties_and_logit_bias_match_openais_formula_on_the_plain_model(model, prompts):
    """Greedy with presence/frequency penalties and a bias, batched in the engine, equals a
    loop over the plain model applying mu[j] - c[j]*fp - (c[j] > 0)*pp + bias[j] itself."""
    p = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, presence_penalty=0.7,
                       frequency_penalty=0.4, logit_bias={5: 2.0, 9: -100})

    def penalised(prompt):
        t, out = torch.tensor([prompt]), []
        with torch.no_grad():
            for _ in range(p.max_tokens):
                mu = model(t)[0, -1].double()
                c = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=mu.numel()).double()
                mu = mu - c * p.frequency_penalty - (c > 0).double() * p.presence_penalty
                mu[5] += 2.0
                mu[9] = float("-inf")
                out.append(int(mu.argmax()))
                t = torch.cat([t, torch.tensor([[out[-1]]])], 1)
        return out

    outs = Engine(model, block_size=4).generate(prompts, p)
    assert [o.output_ids for o in outs] == [penalised(q) for q in prompts]
    plain = Engine(model, block_size=4).generate(prompts, SamplingParams(max_tokens=16, temperature=0,
                                                                          ignore_eos=True))
    assert [o.output_ids for o in outs] != [o.output_ids for o in plain]  # the penalties did something
    assert all(9 not in o.output_ids for o in outs)


@pytest.mark.parametrize("scheduler,blocks", [
    ("vllm-like", None), ("fcfs", None),
    ("vllm-like", 5),  # a pool too small for all: samples preempted, shared blocks released and retaken
])
def test_samples_of_one_prompt_share_its_kv_blocks(model, scheduler, blocks):
    """n samples of a prompt: the first computes it, the others take its whole blocks and
    compute only the last block's tokens; greedy outputs equal the plain model's, and every
    block is back in the pool at the end (a shared block freed once, by its last holder)."""
    from llmctl.serve.sequence import Sequence

    prompt = list(range(3, 47))  # 44 tokens: two whole blocks of 16 shareable; decodes cross into a 4th
    eng = Engine(model, scheduler=scheduler, block_size=16, num_blocks=blocks)
    seqs = [Sequence(prompt, GREEDY) for _ in range(4)]
    for s in seqs[1:]:
        s.prompt_source = seqs[0]
    for s in seqs:
        eng.add(s)
    eng.run_until_done()
    ref = reference(model, prompt, GREEDY.max_tokens)
    assert [s.output_ids for s in seqs] == [ref] * 4
    if blocks is None:
        assert eng.stats["shared_prompt_tokens"] == 3 * 32 and not eng.stats["preemptions"]
    else:
        assert eng.stats["preemptions"] and eng.stats["shared_prompt_tokens"] >= 32
    assert eng.cache.num_free == eng.cache.num_blocks and not eng.cache.refs
