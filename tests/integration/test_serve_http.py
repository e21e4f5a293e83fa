"""The OpenAI-compatible server, driven by the official `openai` client and raw
HTTP: completions, chat, streaming, models, metrics, errors in OpenAI's shape,
a bounded queue that answers 429, bearer keys, and 64 concurrent clients."""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


@pytest.fixture(scope="module")
def server(artifact):
    with K.Server(artifact, "--max-batch-tokens", "512") as s:
        yield s


def client(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_openai_client_completes_chats_and_streams(server):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    r = c.completions.create(model="tiny", prompt="import os\n", max_tokens=8, temperature=0,
                             extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
    assert r.choices[0].text
    again = c.completions.create(model="tiny", prompt="import os\n", max_tokens=8, temperature=0,
                                 extra_body={"ignore_eos": True})
    assert again.choices[0].text == r.choices[0].text  # greedy is deterministic

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    chat = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage.prompt_tokens > 5

    stream = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    parts = list(stream)
    assert len(parts) >= 2 and parts[-1].choices[0].finish_reason == "length"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == chat.choices[0].message.content

    s2 = c.completions.create(model="tiny", prompt="import os\n", max_tokens=8, temperature=0, stream=True,
                              extra_body={"ignore_eos": True})
    assert "".join(p.choices[0].text for p in s2) == r.choices[0].text


def test_errors_have_openai_shape(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", max_tokens=10**6)
    assert e.value.status_code == 400 and "max_tokens" in e.value.message
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"


def test_health_and_metrics(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for name in ("llmctl_requests_running", "llmctl_requests_waiting", "llmctl_kv_cache_usage_ratio",
                 "llmctl_time_to_first_token_seconds_count", "llmctl_inter_token_latency_seconds_count",
                 "llmctl_generated_tokens_total", "llmctl_e2e_request_latency_seconds_count"):
        assert f"\n{name} " in "\n" + text


def test_64_concurrent_clients_lose_none(server):
    c = client(server)

    def one(i):
        r = c.completions.create(model="tiny", prompt=f"def f{i}(x):", max_tokens=4 + i % 12, temperature=0,
                                 extra_body={"ignore_eos": True})
        return i, r.usage.completion_tokens

    with cf.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64), timeout=120))
    assert sorted(i for i, _ in results) == list(range(64))
    assert all(n == 4 + i % 12 for i, n in results)
    text = httpx.get(server.url + "/metrics").text
    assert "\nllmctl_requests_running 0\n" in text and "\nllmctl_requests_waiting 0\n" in text


@pytest.fixture(scope="module")
def hooked(artifact):
    """A server with the test hooks on (llmctl.serve.testhooks): holds the engine on request."""
    with K.Server(artifact, "--max-batch-tokens", "512", env=K.TEST_HOOKS) as s:
        yield s


def test_disconnected_stream_frees_its_slots(hooked):
    before = K.metrics(hooked.url)["llmctl_generated_tokens_total"]
    with httpx.stream("POST", hooked.url + "/v1/completions", timeout=30, json={
            "prompt": "x", "max_tokens": 200, "stream": True, "ignore_eos": True, "llmctl_test": "hold"}) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection (httpcore)
        K.first_event(lines)
        # The engine is held after this first token: the request runs and holds its blocks.
        m = K.metrics(hooked.url)
        assert m["llmctl_requests_running"] == 1 and m["llmctl_kv_cache_usage_ratio"] > 0, m
    # Hung up: the abort releases the hold and is drained by the very next step.
    K.wait_until(lambda: (lambda m: m["llmctl_requests_running"] == 0
                          and m["llmctl_kv_cache_usage_ratio"] == 0)(K.metrics(hooked.url)),
                 "the aborted request's KV blocks freed")
    generated = K.metrics(hooked.url)["llmctl_generated_tokens_total"] - before
    assert generated == 1, f"{generated} tokens: the request ran on after its client hung up"


def test_full_queue_answers_429_and_keys_are_checked(artifact):
    # fcfs: while one static batch runs, later requests wait; one waiting slot only.
    with K.Server(artifact, "--scheduler", "fcfs", "--max-queue", "1", "--api-key-env", "TEST_KEY",
                  env={"TEST_KEY": "sekret", **K.TEST_HOOKS}) as s:
        assert httpx.get(s.url + "/v1/models").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").models.list()
        c = client(s, "sekret")
        auth = {"Authorization": "Bearer sekret"}
        codes = []

        def second():
            codes.append(httpx.post(s.url + "/v1/completions", headers=auth, timeout=120,
                                    json={"prompt": "x", "max_tokens": 4}).status_code)

        # The first request holds the engine after its first token (test hooks): it stays
        # running, however fast the machine, until its client hangs up.
        with httpx.stream("POST", s.url + "/v1/completions", headers=auth, timeout=60, json={
                "prompt": "x", "max_tokens": 200, "ignore_eos": True, "stream": True,
                "llmctl_test": "hold"}) as held:
            lines = held.iter_lines()  # kept: a dropped iterator closes the connection (httpcore)
            K.first_event(lines)
            assert K.metrics(s.url)["llmctl_requests_running"] == 1
            t = threading.Thread(target=second)
            t.start()
            # the second request takes the one queue slot (it waits as long as the hold lasts) ...
            K.wait_until(lambda: K.metrics(s.url)["llmctl_requests_waiting"] == 1, "a waiting request")
            # ... so the next one is refused at once
            with pytest.raises(openai.RateLimitError) as e:
                c.completions.create(model="tiny", prompt="y", max_tokens=4)
            assert e.value.response.headers["retry-after"] == "1"
            assert e.value.body["code"] == "queue_full"
            assert K.metrics(s.url)["llmctl_requests_rejected_total"] == 1
        t.join(120)
        assert codes == [200]  # the hang-up released the engine, and the waiting request ran


def test_server_says_it_is_loading_and_that_it_stopped(artifact):
    s = K.Server(artifact).wait()
    out = s.stop()  # SIGTERM: uvicorn stops, then re-raises it (the exit status says how it ended)
    assert s.proc.returncode == -15, out
    lines = out.splitlines()
    loading = next(i for i, ln in enumerate(lines) if ln.startswith("llmctl serve: loading "))
    loaded = next(i for i, ln in enumerate(lines) if ln.startswith("llmctl serve: loaded tiny in "))
    listening = next(i for i, ln in enumerate(lines) if " on http://127.0.0.1:" in ln)
    term = next(i for i, ln in enumerate(lines) if ln.startswith("llmctl serve: SIGTERM received"))
    assert loading < loaded < listening < term < lines.index("llmctl serve: stopped"), lines
