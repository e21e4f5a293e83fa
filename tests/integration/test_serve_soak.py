"""Soak: 2,000 requests from 32 concurrent clients, one in ten hostile (refused values,
lone surrogates, deep nesting, wrong types, bad JSON, unknown routes, streams cut
after their first token, half-sent request heads, and faults injected into a
request's step). No healthy request may be lost or short, the engine ends healthy
with every KV block free and no restart, and the server's RSS growth is printed.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")
pytest.importorskip("uvicorn")

TOTAL, HOSTILE_EVERY, CLIENTS = 2000, 10, 32
HOSTILE = ["nan", "seed", "surrogate", "deep", "types", "bad-json", "route", "cut-stream", "half-head",
           "fail-step"]


def healthy(c: httpx.Client, rng: random.Random, i: int) -> str | None:
    """One normal request, streamed or not, completions or chat; None when it was answered in full."""
    n = rng.randint(1, 16)
    chat = rng.random() < 0.3
    body = {"max_tokens": n, "ignore_eos": True, "temperature": rng.choice([0, 0.8]), "seed": i}
    if chat:
        body["messages"] = [{"role": "user", "content": f"question {i}"}]
    else:
        body["prompt"] = f"def f{i}(x):"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    if rng.random() < 0.3:
        body["stream"], body["stream_options"] = True, {"include_usage": True}
        with c.stream("POST", path, json=body) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        if r.status_code != 200 or events[-1] != "[DONE]":
            return f"stream {r.status_code}: {events[-2:]}"
        usage = json.loads(events[-2])["usage"]
    else:
        r = c.post(path, json=body)
        if r.status_code != 200:
            return f"{r.status_code}: {r.text[:200]}"
        usage = r.json()["usage"]
    return None if usage["completion_tokens"] == n else f"{usage['completion_tokens']} tokens, asked {n}"


def hostile(c: httpx.Client, url: str, port: int, kind: str) -> str | None:
    """One hostile request; None when the server answered it as it should."""
    def expect(r, status):
        ok = r.status_code == status and "error" in r.json()
        return None if ok else f"{kind}: {r.status_code} {r.text[:200]}"

    raw = {"nan": b'{"prompt":"x","max_tokens":3,"temperature":NaN}',
           "seed": b'{"prompt":"x","max_tokens":3,"seed":18446744073709551616}',
           "surrogate": b'{"prompt":"\\ud800","max_tokens":3}',
           "deep": b'{"prompt":' + b"[" * 5000 + b"]" * 5000 + b"}",
           "types": b'{"prompt":"x","max_tokens":"3","stream":1}',
           "bad-json": b'{"prompt": "x", \xff'}.get(kind)
    if raw is not None:
        return expect(c.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"}), 400)
    if kind == "route":
        return expect(c.post("/v1/embeddings", json={"input": "x"}), 404)
    if kind == "fail-step":
        return expect(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 20, "ignore_eos": True,
                                                      "llmctl_test": "fail-step"}), 500)
    if kind == "cut-stream":  # hang up after the first token; the request must be aborted
        with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
                "prompt": "x", "max_tokens": 200, "ignore_eos": True, "stream": True}) as r:
            K.first_event(r.iter_lines())
        return None
    if kind == "half-head":  # a request head that never ends, then the client gives up
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        return None
    raise AssertionError(kind)


def test_soak_2000_requests_with_hostile_ones(tmp_path):
    art = K.tiny_artifact(tmp_path / "art")
    with K.Server(art, "--max-batch-tokens", "512", env=K.TEST_HOOKS) as s:
        proc = psutil.Process(s.proc.pid)
        local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(local, "c"):
                local.c = httpx.Client(base_url=s.url, timeout=60)
            return local.c

        def one(i: int):
            rng = random.Random(i)
            if i % HOSTILE_EVERY == HOSTILE_EVERY - 1:
                kind = HOSTILE[(i // HOSTILE_EVERY) % len(HOSTILE)]
                return "hostile", hostile(client(), s.url, s.port, kind)
            return "healthy", healthy(client(), rng, i)

        with ThreadPoolExecutor(CLIENTS) as pool:  # warm-up: allocator pools, lazy imports
            list(pool.map(one, range(-200, 0)))
        rss0 = proc.memory_info().rss
        t0 = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(one, range(TOTAL)))
        took = time.monotonic() - t0
        rss1 = proc.memory_info().rss

        problems = [(i, kind, p) for i, (kind, p) in enumerate(results) if p]
        n_hostile = sum(kind == "hostile" for kind, _ in results)
        lost = sum(kind == "healthy" for _, kind, _ in problems)
        print(f"\nsoak: {TOTAL} requests ({n_hostile} hostile, {n_hostile / TOTAL:.0%}) in {took:.1f} s, "
              f"{lost} healthy lost; server RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB "
              f"({(rss1 - rss0) / 2**20:+.1f} MiB)")
        assert not problems, problems[:10]
        assert n_hostile == TOTAL // HOSTILE_EVERY
        m = K.wait_until(lambda: (lambda m: m if m["llmctl_requests_running"] == 0
                                  and m["llmctl_kv_cache_usage_ratio"] == 0 else None)(K.metrics(s.url)),
                         "every request finished and its KV blocks freed")
        assert m["llmctl_healthy"] == 1 and m["llmctl_requests_waiting"] == 0
        assert m["llmctl_engine_restarts_total"] == 0
        # the injected faults: one hostile request in len(HOSTILE), and 2 in the warm-up
        assert m["llmctl_requests_failed_total"] == TOTAL // HOSTILE_EVERY // len(HOSTILE) + 2
        assert httpx.get(s.url + "/health").status_code == 200
