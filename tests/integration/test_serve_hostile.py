"""Hostile requests against a live server over real HTTP (issue 13, items 1 and 6): each
reproduction that once took the engine down or answered text/plain is a test here, and
a failure injected into one request's step (test hooks) fails that request alone."""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

# Short connection timeouts so that the slowloris tests are quick (defaults: 10 s, 5 s, 30 s).
TIMEOUTS = {"LLMCTL_SERVE_HEADER_TIMEOUT_S": "2", "LLMCTL_SERVE_IDLE_TIMEOUT_S": "2",
            "LLMCTL_SERVE_BODY_TIMEOUT_S": "2"}
NORMAL = {"prompt": "def f(x):", "max_tokens": 4, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


@pytest.fixture(scope="module")
def server(artifact):
    """Production settings (no test hooks), short connection timeouts, a bearer key."""
    with K.Server(artifact, "--api-key-env", "TEST_KEY", env={"TEST_KEY": "sekret", **TIMEOUTS}) as s:
        yield s


@pytest.fixture(scope="module")
def hooked(artifact):
    with K.Server(artifact, "--max-batch-tokens", "512", env=K.TEST_HOOKS) as s:
        yield s


AUTH = {"Authorization": "Bearer sekret"}


def post(server, path: str, raw: bytes, headers=AUTH) -> httpx.Response:
    return httpx.post(server.url + path, content=raw, timeout=60,
                      headers={"Content-Type": "application/json", **headers})


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    return err


def assert_serving(server, headers=AUTH) -> None:
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    r = httpx.post(server.url + "/v1/completions", json=NORMAL, headers=headers, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text


# --- item 1: requests that killed the engine for good --------------------------------------

@pytest.mark.parametrize("path,raw,param", [
    ("/v1/completions", b'{"model":"demo","prompt":"x","max_tokens":3,"temperature":NaN}', None),
    ("/v1/completions", b'{"prompt":"x","max_tokens":3,"seed":18446744073709551616}', "seed"),
    ("/v1/completions", b'{"prompt":"x","max_tokens":3,"seed":-9223372036854775809}', "seed"),
    ("/v1/chat/completions", b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,'
                             b'"temperature":NaN,"stream":true}', None),
    ("/v1/completions", b'{"prompt":"x","top_p":-Infinity}', None),
])
def test_values_that_killed_the_engine_are_refused_and_it_stays_up(server, path, raw, param):
    err = assert_openai_error(post(server, path, raw), 400)
    assert err["param"] == param
    assert_serving(server)


def test_largest_seeds_are_served(server):
    for seed in (2**64 - 1, -(2**63)):
        r = httpx.post(server.url + "/v1/completions", headers=AUTH, timeout=60,
                       json={**NORMAL, "temperature": 1.0, "seed": seed})
        assert r.status_code == 200, r.text
    # -1 is 2**64-1 read as two's complement, as torch reads it: the same tokens
    a, b = (httpx.post(server.url + "/v1/completions", headers=AUTH, timeout=60,
                       json={**NORMAL, "temperature": 1.0, "seed": s}).json()["choices"][0]["text"]
            for s in (-1, 2**64 - 1))
    assert a == b


@pytest.mark.parametrize("field,value", [
    ("max_tokens", True), ("temperature", False), ("n", True), ("seed", True), ("top_k", 1.0),
    ("stream", 1), ("stream", "yes"), ("ignore_eos", "true"), ("echo", 1), ("stop", 7),
    ("stream_options", [1]), ("logprobs", True), ("presence_penalty", 3), ("model", 5),
])
def test_exact_types(server, field, value):
    err = assert_openai_error(post(server, "/v1/completions",
                                   json.dumps({**NORMAL, field: value}).encode()), 400)
    assert err["param"] == field


# --- item 6: HTTP details ---------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"prompt":"\\ud800","max_tokens":3}',
    b'{"messages":[{"role":"user","content":"a\\udfffb"}]}',
    b'{"prompt":"x","\\udc80":1}',
])
def test_a_lone_surrogate_is_a_400_in_openai_shape(server, raw):
    path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
    err = assert_openai_error(post(server, path, raw), 400)
    assert "surrogate" in err["message"]
    assert_serving(server)


@pytest.mark.parametrize("depth", [40, 2000, 100_000])
def test_deep_nesting_is_a_400_in_openai_shape(server, depth):
    raw = b'{"prompt":' + b"[" * depth + b"]" * depth + b"}"
    err = assert_openai_error(post(server, "/v1/completions", raw), 400)
    assert "nests deeper" in err["message"]
    assert_serving(server)


def test_unknown_routes_and_wrong_methods_are_json(server):
    err = assert_openai_error(httpx.get(server.url + "/v2/nothing"), 404)
    assert err["code"] == "not_found" and "/v2/nothing" in err["message"]
    assert_openai_error(httpx.post(server.url + "/nope", json={}), 404)
    r = httpx.get(server.url + "/v1/completions", headers=AUTH)
    assert assert_openai_error(r, 405)["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]
    assert_openai_error(httpx.delete(server.url + "/health"), 405)


@pytest.mark.parametrize("value,status", [
    ("bearer sekret", 200), ("BEARER sekret", 200), ("BeArEr  sekret", 200),
    ("Basic sekret", 401), ("Bearersekret", 401), ("Bearer wrong", 401), ("sekret", 401), ("", 401),
])
def test_the_auth_scheme_is_case_insensitive(server, value, status):
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": value} if value else {})
    assert r.status_code == status, r.text
    if status == 401:
        assert assert_openai_error(r, 401)["code"] == "invalid_api_key"


def closed_by_server(s: socket.socket) -> bool:
    """True once the server closes `s`; the 60 s socket timeout (far above the 2 s under
    test) only keeps a server that never closes from hanging the suite."""
    s.settimeout(60)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_slowloris_sockets_are_closed(server):
    socks = []
    for i in range(50):  # request heads that never end, and sockets that send nothing at all
        s = socket.create_connection(("127.0.0.1", server.port))
        if i % 2:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        socks.append(s)
    assert_serving(server)  # the server answers meanwhile
    try:
        for s in socks:
            assert closed_by_server(s), "a slowloris socket is still open"
    finally:
        for s in socks:
            s.close()


def test_a_trickled_request_head_is_cut_off(server):
    """uvicorn's idle timer restarts with every byte; the head timer does not."""
    s = socket.create_connection(("127.0.0.1", server.port))
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 4000
    stop = threading.Event()

    def trickle():
        try:
            for b in head:
                if stop.wait(0.1):
                    return
                s.send(bytes([b]))
        except OSError:
            return

    t = threading.Thread(target=trickle)
    t.start()
    try:
        assert closed_by_server(s), "a trickled request head kept its socket"
    finally:
        stop.set()
        t.join()
        s.close()


def test_a_body_that_never_arrives_gets_408_and_the_connection_closes(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\n"
              b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\": ")
    s.settimeout(60)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except socket.timeout:
        raise AssertionError(f"the server neither answered nor closed: {data!r}") from None
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_an_idle_keep_alive_connection_is_closed(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(60)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    try:
        assert closed_by_server(s), "an idle keep-alive connection stayed open"
    finally:
        s.close()


# --- engine isolation (test hooks inject the failures) ------------------------------------

def stream(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        return [json.loads(line[5:]) for line in r.iter_lines()
                if line.startswith("data:") and line != "data: [DONE]"]


def normal_requests(url: str, n: int) -> list[httpx.Response]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: httpx.post(url + "/v1/completions", timeout=60, json={
            "prompt": f"def f{i}(x):", "max_tokens": 12 + i, "ignore_eos": True}), range(n)))


def test_a_failure_in_one_requests_step_fails_it_alone(hooked):
    before = K.metrics(hooked.url)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("events", stream(hooked.url, {
        "prompt": "x", "max_tokens": 50, "ignore_eos": True, "llmctl_test": "fail-step"})))
    t.start()
    others = normal_requests(hooked.url, 6)
    t.join(60)
    events = box["events"]
    # (how many chunks came before the error depends on when the event loop woke up)
    assert all("choices" in e for e in events[:-1])
    assert "injected fault" in events[-1]["error"]["message"] and events[-1]["error"]["type"] == "server_error"
    assert [r.status_code for r in others] == [200] * 6
    assert [r.json()["usage"]["completion_tokens"] for r in others] == [12 + i for i in range(6)]
    r = httpx.post(hooked.url + "/v1/completions", timeout=60,
                   json={"prompt": "x", "max_tokens": 9, "llmctl_test": "fail-step"})
    assert "injected fault" in assert_openai_error(r, 500)["message"]
    after = K.metrics(hooked.url)
    assert after["llmctl_requests_failed_total"] - before["llmctl_requests_failed_total"] == 2
    assert after["llmctl_engine_restarts_total"] == before["llmctl_engine_restarts_total"]
    assert after["llmctl_kv_cache_usage_ratio"] == 0 and after["llmctl_healthy"] == 1
    assert_serving(hooked, headers={})


def test_a_failing_forward_pass_fails_only_its_request(hooked):
    """A forward pass over three requests raises because of one: run alone, the other two
    go on. The hold puts all three in the same step whatever the machine's speed."""
    before = K.metrics(hooked.url)
    out = {}

    def send(name, body):
        out[name] = httpx.post(hooked.url + "/v1/completions", json=body, timeout=60)

    with httpx.stream("POST", hooked.url + "/v1/completions", timeout=60, json={
            "prompt": "x", "max_tokens": 10, "ignore_eos": True, "stream": True,
            "llmctl_test": "hold"}) as held:
        lines = held.iter_lines()  # kept: a dropped iterator closes the connection (httpcore)
        K.first_event(lines)
        threads = [threading.Thread(target=send, args=a) for a in (
            ("bad", {"prompt": "y", "max_tokens": 10, "llmctl_test": "fail-forward"}),
            ("good", {"prompt": "z", "max_tokens": 10, "ignore_eos": True}))]
        for t in threads:
            t.start()
        K.wait_until(lambda: K.metrics(hooked.url)["llmctl_requests_waiting"] == 2, "two waiting requests")
        assert httpx.post(hooked.url + "/_test/release").status_code == 200
        rest = [json.loads(x[5:]) for x in lines if x.startswith("data:") and x != "data: [DONE]"]
    for t in threads:
        t.join(60)
    assert rest[-1]["choices"][0]["finish_reason"] == "length"  # the held request finished
    assert out["good"].status_code == 200 and out["good"].json()["usage"]["completion_tokens"] == 10
    assert "injected fault in a forward pass" in assert_openai_error(out["bad"], 500)["message"]
    after = K.metrics(hooked.url)
    assert after["llmctl_requests_failed_total"] - before["llmctl_requests_failed_total"] == 1
    assert after["llmctl_engine_restarts_total"] == before["llmctl_engine_restarts_total"]
    assert_serving(hooked, headers={})


def test_an_engine_in_an_unknown_state_is_restarted(hooked):
    before = K.metrics(hooked.url)["llmctl_engine_restarts_total"]
    r = httpx.post(hooked.url + "/v1/completions", timeout=60,
                   json={"prompt": "x", "max_tokens": 4, "llmctl_test": "fail-engine"})
    err = assert_openai_error(r, 500)
    assert "engine failed" in err["message"] and "injected engine fault" in err["message"]
    K.wait_until(lambda: K.metrics(hooked.url)["llmctl_engine_restarts_total"] == before + 1,
                 "the engine restarted")
    assert_serving(hooked, headers={})


def test_a_server_whose_engine_keeps_failing_gives_up_with_exit_2(artifact):
    s = K.Server(artifact, env=K.TEST_HOOKS)
    try:
        s.wait()
        for n in range(4):  # MAX_RESTARTS (3) restarts, then the 4th failure stops the server
            r = httpx.post(s.url + "/v1/completions", timeout=60,
                           json={"prompt": "x", "max_tokens": 4, "llmctl_test": "fail-engine"})
            assert_openai_error(r, 500)
            if n < 3:
                K.wait_until(lambda: K.metrics(s.url)["llmctl_engine_restarts_total"] == n + 1,
                             f"restart {n + 1}")
        s.proc.wait(60)
    finally:
        out = s.stop()
    assert s.proc.returncode == 2, out
    assert "the engine failed 4 times" in out and "Traceback" not in out, out
