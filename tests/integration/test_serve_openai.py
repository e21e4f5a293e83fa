"""OpenAI conformance through the official `openai` client over real HTTP on 127.0.0.1:
n > 1 and best_of, list prompts (text and token ids), logit_bias, presence/frequency
penalties, chat logprobs, token ids, unknown models (404), context overflow (400 with
the lengths), parameters the engine cannot honour (400 naming them), and /metrics
parsed by prometheus_client with one inter-token sample per generated token."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

IDS = {"return_token_ids": True, "ignore_eos": True}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


@pytest.fixture(scope="module")
def server(artifact):
    with K.Server(artifact, "--max-batch-tokens", "512") as s:
        yield s


@pytest.fixture(scope="module")
def c(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(c, prompt, n=8, **kw):
    return c.completions.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0, extra_body=IDS, **kw)


def test_n_samples_are_indexed_distinct_and_counted(c):
    r = c.completions.create(model="tiny", prompt="def f(x):", max_tokens=12, temperature=1.0, seed=5, n=3,
                             extra_body=IDS)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    texts = [ch.text for ch in r.choices]
    assert len(set(texts)) > 1, texts  # three samples, not one answer three times
    assert r.usage.completion_tokens == sum(len(ch.token_ids) for ch in r.choices) == 36
    assert r.usage.prompt_tokens == len(r.choices[0].prompt_token_ids)  # the prompt counted once
    again = c.completions.create(model="tiny", prompt="def f(x):", max_tokens=12, temperature=1.0, seed=5, n=3,
                                 extra_body=IDS)
    assert [ch.text for ch in again.choices] == texts  # seeded: repeatable


def test_chat_n_streams_each_choice_by_index(c):
    msgs = [{"role": "user", "content": "hello"}]
    whole = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=1.0, seed=11, n=2,
                                      extra_body={"ignore_eos": True})
    assert [ch.index for ch in whole.choices] == [0, 1]
    parts = {0: "", 1: ""}
    finished = set()
    for ev in c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=1.0, seed=11, n=2,
                                        stream=True, extra_body={"ignore_eos": True}):
        for ch in ev.choices:
            parts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert finished == {0, 1}
    assert [parts[0], parts[1]] == [ch.message.content for ch in whole.choices]


def test_best_of_keeps_the_most_likely_sample(c):
    kw = dict(model="tiny", prompt="import ", max_tokens=8, temperature=1.0, seed=3, logprobs=0,
              extra_body={"ignore_eos": True})
    all3 = c.completions.create(n=3, **kw)
    scores = [sum(ch.logprobs.token_logprobs) for ch in all3.choices]
    best = c.completions.create(n=1, best_of=3, **kw)
    assert len(best.choices) == 1 and best.choices[0].index == 0
    assert best.choices[0].text == all3.choices[scores.index(max(scores))].text
    assert best.usage.completion_tokens == 24  # every sample is generated (and billed, as OpenAI does)


def test_list_prompts_give_one_choice_each_in_order(c):
    alone = [greedy(c, p).choices[0].text for p in ("def f(x):", "import os\n", "class A:")]
    r = greedy(c, ["def f(x):", "import os\n", "class A:"])
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert [ch.text for ch in r.choices] == alone
    two = c.completions.create(model="tiny", prompt=["def f(x):", "class A:"], n=2, max_tokens=8, temperature=0,
                               extra_body=IDS)
    assert [ch.index for ch in two.choices] == [0, 1, 2, 3]  # prompt * n + sample
    assert [ch.text for ch in two.choices] == [alone[0], alone[0], alone[2], alone[2]]


def test_token_id_list_prompts(c):
    r = greedy(c, [[5, 6, 7], [8, 9]])
    assert [ch.prompt_token_ids for ch in r.choices] == [[5, 6, 7], [8, 9]]
    assert r.choices[1].text == greedy(c, [8, 9]).choices[0].text
    assert r.usage.prompt_tokens == 5


def test_logit_bias_bans_and_forces_tokens(c):
    plain = greedy(c, "def f(x):", 12)
    produced = sorted(set(plain.choices[0].token_ids))
    banned = c.completions.create(model="tiny", prompt="def f(x):", max_tokens=12, temperature=0,
                                  logit_bias={str(t): -100 for t in produced}, extra_body=IDS)
    assert not set(banned.choices[0].token_ids) & set(produced)
    for seed in range(3):  # sampled too, never only the greedy path
        s = c.completions.create(model="tiny", prompt="def f(x):", max_tokens=12, temperature=1.5, seed=seed,
                                 logit_bias={str(t): -100 for t in produced}, extra_body=IDS)
        assert not set(s.choices[0].token_ids) & set(produced)
    forced = c.completions.create(model="tiny", prompt="def f(x):", max_tokens=6, temperature=0,
                                  logit_bias={"77": 100}, extra_body=IDS)
    assert forced.choices[0].token_ids == [77] * 6
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", logit_bias={"100000": 1})
    assert e.value.body["param"] == "logit_bias"


def test_penalties_change_a_repetitive_greedy_output(c):
    plain = greedy(c, "def f(x):", 40).choices[0].token_ids
    assert len(set(plain)) < len(plain)  # the tiny model repeats itself: something to penalise
    pen = greedy(c, "def f(x):", 40, frequency_penalty=2.0, presence_penalty=2.0).choices[0].token_ids
    assert pen != plain
    # a presence penalty of 2 on logits of this spread: fewer repeats than without
    assert len(pen) - len(set(pen)) < len(plain) - len(set(plain))


def test_chat_logprobs_in_openais_shape(c):
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                  temperature=0, logprobs=True, top_logprobs=3, extra_body=IDS)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.bytes == list(item.token.encode())
        assert abs(item.logprob - item.top_logprobs[0].logprob) < 1e-5  # greedy takes the top one
    assert r.prompt_token_ids and len(r.choices[0].token_ids) == 6
    off = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert off.choices[0].logprobs is None


def test_unknown_model_is_404_and_models_by_id(c, server):
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    m = c.models.retrieve("tiny")
    assert m.id == "tiny" and m.created > 1_700_000_000
    assert c.models.list().data[0].created == m.created
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4")


def test_context_overflow_is_a_400_naming_the_lengths(c):
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt=[1] * 201, max_tokens=200)
    assert e.value.code == "context_length_exceeded"
    assert "256" in e.value.message and "201 in the prompt" in e.value.message and "200 in the completion" \
        in e.value.message
    ok = c.completions.create(model="tiny", prompt=[1] * 250, temperature=0, extra_body={"ignore_eos": True})
    assert ok.usage.completion_tokens == 6  # no max_tokens: what is left of the context


@pytest.mark.parametrize("call,param", [
    (lambda c: c.completions.create(model="tiny", prompt="x", suffix="y"), "suffix"),
    (lambda c: c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                         response_format={"type": "json_object"}), "response_format"),
    (lambda c: c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], tools=[
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]), "tools"),
    (lambda c: c.completions.create(model="tiny", prompt="x", extra_body={"max_token": 3}), "max_token"),
    (lambda c: c.completions.create(model="tiny", prompt="x", best_of=2, n=3), "best_of"),
])
def test_what_cannot_be_honoured_is_refused_by_name(c, call, param):
    with pytest.raises(openai.BadRequestError) as e:
        call(c)
    assert e.value.body["param"] == param, e.value.body


def test_metrics_parse_and_count_every_token(artifact):
    parser = pytest.importorskip("prometheus_client.parser")
    with K.Server(artifact, "--max-batch-tokens", "512") as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        c.completions.create(model="tiny", prompt="a", max_tokens=7, temperature=0, extra_body=IDS)
        c.completions.create(model="tiny", prompt=["a", "b"], max_tokens=5, temperature=0, extra_body=IDS)
        list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=9,
                                       stream=True, extra_body={"ignore_eos": True}))
        with pytest.raises(openai.BadRequestError):
            c.completions.create(model="tiny", prompt="a", max_tokens=0)
        text = httpx.get(s.url + "/metrics").text
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    samples = {(x.name, tuple(sorted(x.labels.items()))): x.value for f in fams.values() for x in f.samples}
    seqs, tokens = 4, 7 + 5 + 5 + 9
    assert samples[("llmctl_inter_token_latency_seconds_count", ())] == tokens - seqs  # one per token after the first
    assert samples[("llmctl_time_to_first_token_seconds_count", ())] == seqs
    assert samples[("llmctl_e2e_request_latency_seconds_count", ())] == seqs
    assert samples[("llmctl_request_queue_time_seconds_count", ())] == seqs
    assert samples[("llmctl_generated_tokens_total", ())] == tokens
    assert fams["llmctl_generated_tokens"].type == "counter"
    assert samples[("llmctl_requests_total", (("endpoint", "completions"), ("status", "200")))] == 2
    assert samples[("llmctl_requests_total", (("endpoint", "chat"), ("status", "200")))] == 1
    assert samples[("llmctl_requests_total", (("endpoint", "completions"), ("status", "400")))] == 1
    assert "llmctl_tokens_per_second" not in fams


def test_samples_share_the_prompts_kv_blocks(c, server):
    prompt = list(range(10, 50))  # 40 tokens: two whole 16-token blocks computed once for all samples
    before = K.metrics(server.url)["llmctl_prompt_tokens_shared_total"]
    r = c.completions.create(model="tiny", prompt=prompt, n=4, max_tokens=8, temperature=0, extra_body=IDS)
    after = K.metrics(server.url)
    assert after["llmctl_prompt_tokens_shared_total"] - before == 3 * 32
    alone = greedy(c, prompt).choices[0].token_ids
    assert [ch.token_ids for ch in r.choices] == [alone] * 4
    assert after["llmctl_kv_cache_usage_ratio"] == 0  # every shared block back in the pool


def test_the_thread_count_comes_from_the_config(artifact, tmp_path):
    """The serve config's `threads` wins over OMP_NUM_THREADS=1 (servekit's); the order of
    the other sources is unit-tested (tests/unit/test_thread_policy.py)."""
    cfg = tmp_path / "serve.toml"
    cfg.write_text("threads = 2\n")
    s = K.Server(artifact, "--config", str(cfg)).wait()
    assert httpx.get(s.url + "/health").status_code == 200
    assert "2 torch threads (the serve config's threads)" in s.stop()
    s = K.Server(artifact).wait()
    assert "1 torch threads (OMP_NUM_THREADS)" in s.stop()
