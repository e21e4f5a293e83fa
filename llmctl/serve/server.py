"""The OpenAI-compatible HTTP server (Starlette on uvicorn) in front of the engine thread.

Routes: POST /v1/completions, POST /v1/chat/completions (both stream as
server-sent events with `stream: true`), GET /v1/models, /health, /metrics
(Prometheus text). A request is refused with 429 + Retry-After when `max_queue`
requests already wait, so overload is an answer, not a timeout; a client that
disconnects aborts its sequence, which frees its KV blocks at the next step.

Every error, whatever raised it (a refused body, an unknown route or method, a
bug), is JSON in OpenAI's shape {"error": {"message", "type", "param", "code"}}.
A body is checked whole (llmctl.serve.validate) and field by field
(llmctl.serve.protocol) before the engine sees it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Optional

from llmctl.serve.httpconn import Timeouts
from llmctl.serve.protocol import ApiError

MAX_BODY = 1 << 20  # bytes of one request body
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class Histogram:
    def __init__(self, name: str, help_: str, buckets):
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * len(buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, v: float) -> None:
        self.sum += v
        self.count += 1
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        out += [f'{self.name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{self.name}_bucket{{le="+Inf"}} {self.count}', f"{self.name}_sum {self.sum}",
                f"{self.name}_count {self.count}"]
        return out


class ClientGone(Exception):
    """The client hung up while its request ran."""


class ServerState:
    def __init__(self, worker, model_name: str, settings, api_key: Optional[str], test_hooks: bool = False,
                 timeouts: Optional[Timeouts] = None):
        self.worker, self.engine, self.model_name = worker, worker.engine, model_name
        self.settings, self.api_key, self.test_hooks = settings, api_key, test_hooks
        self.timeouts = timeouts or Timeouts()
        self.restarter = None  # llmctl.serve.restart, on one rank
        self.rejected = 0
        self.ttft = Histogram("llmctl_time_to_first_token_seconds", "Time from arrival to the first output token.",
                              TTFT_BUCKETS)
        self.itl = Histogram("llmctl_inter_token_latency_seconds",
                             "Time between consecutive output tokens of a request (one sample per token).",
                             ITL_BUCKETS)
        self.e2e = Histogram("llmctl_e2e_request_latency_seconds",
                             "Time from arrival to the last token, per finished sequence.", E2E_BUCKETS)
        self.queue = Histogram("llmctl_request_queue_time_seconds",
                               "Time from arrival to the first step that ran the sequence.", TTFT_BUCKETS)
        self.requests: dict[tuple[str, int], int] = {}
        self.created = int(time.time())  # /v1/models: when this server started serving the model

    def count(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def waiting(self) -> int:
        return len(self.engine.waiting) + self.engine.inbox.qsize()

    def swap(self, worker) -> None:
        """A restarted engine takes over (llmctl.serve.restart)."""
        self.worker, self.engine = worker, worker.engine

    def rank_hosts(self) -> list[str]:
        """Each MPI rank's host, in rank order ([] on one rank): gathered at start by the
        data-parallel router (the worker) or the tensor-parallel leader (on the engine)."""
        for holder in (self.worker, getattr(self.engine, "mpi_leader", None)):
            ranks = getattr(holder, "ranks", None)
            if isinstance(ranks, list) and ranks:
                return [host for host, _ in ranks]
        return []


def build_app(state: ServerState, on_shutdown=()):
    """The Starlette app; `on_shutdown` callables run at a graceful stop (uvicorn re-raises
    SIGTERM afterwards, so code after `Server.run` would never run)."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    from llmctl.serve import validate

    def err(e: ApiError, headers: Optional[dict] = None) -> JSONResponse:
        headers = dict(headers or {})
        if e.status in (429, 503):
            headers["Retry-After"] = "1"
        if e.status == 408:  # the body may still be arriving: this connection is done
            headers["Connection"] = "close"
        return JSONResponse(e.body(), status_code=e.status, headers=headers or None)

    def authorise(request: Request) -> None:
        if state.api_key is None:
            return
        # RFC 7235: the scheme is case-insensitive ("bearer", "BEARER"); spaces may repeat.
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        if not (scheme.lower() == "bearer"
                and hmac.compare_digest(token.strip().encode(), state.api_key.encode())):
            raise ApiError(401, "invalid or missing API key", type_="authentication_error",
                           code="invalid_api_key")

    async def read_body(request: Request) -> dict:
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        try:  # a client that trickles its body must not hold a connection forever
            raw = await asyncio.wait_for(request.body(), timeout=state.timeouts.body_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {state.timeouts.body_s:g} s",
                           code="request_timeout") from None
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        body = validate.parse_json(raw)
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        validate.check_tree(body)
        return body

    def observe(seq, seen: list) -> None:
        """Latency samples of `seq` not yet observed: time to first token once, then one
        inter-token gap per generated token (`seen[0]` tokens already counted)."""
        times = seq.token_times
        if times and seen[0] == 0:
            state.ttft.observe(times[0] - seq.arrival)
            if seq.scheduled_at is not None:
                state.queue.observe(seq.scheduled_at - seq.arrival)
            seen[0] = 1
        for k in range(seen[0], len(times)):
            state.itl.observe(times[k] - times[k - 1])
        seen[0] = max(seen[0], len(times))

    async def generate(request: Request, chat: bool):
        endpoint = "chat" if chat else "completions"
        r = await _generate(request, chat)
        state.count(endpoint, r.status_code)
        return r

    async def _generate(request: Request, chat: bool):
        from llmctl.serve import protocol as P

        worker, engine = state.worker, state.engine  # one engine for the whole request
        try:
            authorise(request)
            body = await read_body(request)
            if not worker.healthy:
                raise ApiError(503, f"the engine is down: {worker.error}", type_="server_error")
            params = P.sampling_params(body, state.settings.max_tokens_limit, chat, state.test_hooks,
                                       vocab_size=engine.cfg.vocab_size)
            if body.get("model") is not None and body["model"] != state.model_name:
                raise model_not_found(body["model"])
            seqs = P.sequences(body, chat, params, engine.tokenizer, state.settings.max_prompt_tokens,
                               engine.cfg.vocab_size, engine.cfg.max_seq_len)
            for seq in seqs:
                problem = engine.check(seq)
                if problem:
                    raise ApiError(400, problem, code="context_length_exceeded")
            if state.waiting() + len(seqs) > max(state.settings.max_queue, len(seqs)):
                state.rejected += 1
                raise ApiError(429, "the server is busy: the request queue is full; retry later",
                               type_="rate_limit_error", code="queue_full")
        except ApiError as e:
            return err(e)
        rid, model = P.new_id(chat), state.model_name
        n, _ = P.choice_counts(body, chat)
        q: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for seq in seqs:
            worker.listen(seq, loop, q, every_token=body.get("stream", False))
        for seq in seqs:
            worker.submit(seq)
        seen = {seq.seq_id: [0] for seq in seqs}
        ended: set = set()

        def done(seq) -> None:
            """Observe `seq`'s latencies so far (each sample once, however often called)."""
            observe(seq, seen[seq.seq_id])
            if seq.finished and seq.finish_reason != "error" and seq.seq_id not in ended:
                ended.add(seq.seq_id)
                state.e2e.observe(time.monotonic() - seq.arrival)

        async def next_event():
            """Wait for the engine to wake us. An engine that died between our health
            check and `listen` never will: fail the request rather than wait forever."""
            while True:
                try:
                    return await asyncio.wait_for(q.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    # `died`, not `healthy`: with dp replicas a lost rank makes the server
                    # unhealthy while rank 0's own engine still serves its requests.
                    if worker.died.is_set():
                        for seq in seqs:
                            if not seq.finished:
                                seq.error = seq.error or worker.error or "the engine stopped"
                                seq.finish_reason = "error"
                                return seq
                    if not body.get("stream") and await request.is_disconnected():
                        raise ClientGone() from None

        def failed(seq) -> ApiError:
            return ApiError(500, f"generation failed: {seq.error or worker.error or 'unknown error'}",
                            type_="server_error")

        def cleanup() -> None:  # also when the client goes away: free every slot it held
            for seq in seqs:
                worker.unlisten(seq)
                if not seq.finished:
                    worker.abort(seq)

        if body.get("stream"):
            include_usage = (body.get("stream_options") or {}).get("include_usage")

            async def events():
                sent = {seq.seq_id: 0 for seq in seqs}
                first = {seq.seq_id: True for seq in seqs}
                closed: set = set()
                try:
                    while len(closed) < len(seqs):
                        got = await next_event()
                        if got is None or got.seq_id in closed:
                            continue
                        seq = got
                        done(seq)
                        if seq.finish_reason == "error":
                            yield f"data: {json.dumps(failed(seq).body())}\n\n"
                            return
                        # Read `finished` before the text: the engine thread may finish the
                        # sequence in between, and the held-back tail must still go out.
                        finished = seq.finished
                        text = P.stable_text(seq)
                        sid = seq.seq_id
                        if len(text) > sent[sid] or first[sid]:
                            yield "data: " + json.dumps(P.chunk(rid, model, chat, text[sent[sid]:], None,
                                                                first[sid], seq.index)) + "\n\n"
                            sent[sid], first[sid] = len(text), False
                        if finished:
                            closed.add(sid)
                            yield "data: " + json.dumps(P.chunk(rid, model, chat, "", seq.finish_reason, False,
                                                                seq.index)) + "\n\n"
                    if include_usage:
                        yield "data: " + json.dumps({
                            "id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": int(time.time()), "model": model, "choices": [],
                            "usage": P.usage(seqs)}) + "\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    cleanup()
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        try:
            while not all(seq.finished for seq in seqs):
                got = await next_event()
                if got is not None:
                    done(got)
                if any(seq.finish_reason == "error" for seq in seqs):
                    break
        except ClientGone:  # nobody reads this; nginx's "client closed request" for the access log
            return err(ApiError(499, "the client closed the connection"))
        finally:
            cleanup()
        for seq in seqs:  # several may finish in one step and wake us once
            done(seq)
        bad = [seq for seq in seqs if seq.finish_reason == "error"]
        if bad:
            return err(failed(bad[0]))
        return JSONResponse(P.response(seqs, rid, model, chat, engine.tokenizer, n=n,
                                       token_ids=bool(body.get("return_token_ids")), created=None))

    def model_not_found(name) -> ApiError:
        return ApiError(404, f"The model `{name}` does not exist (this server serves `{state.model_name}`).",
                        "model", code="model_not_found")

    def model_card() -> dict:
        return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "llmctl"}

    async def completions(request: Request):
        return await generate(request, chat=False)

    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    async def models(request: Request):
        try:
            authorise(request)
        except ApiError as e:
            return err(e)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model_info(request: Request):
        try:
            authorise(request)
            if request.path_params["model"] != state.model_name:
                raise model_not_found(request.path_params["model"])
        except ApiError as e:
            return err(e)
        return JSONResponse(model_card())

    async def health(request: Request):
        ranks = getattr(state.engine, "rank_pids", None) or []
        hosts = state.rank_hosts()
        if state.worker.healthy:
            return JSONResponse({"status": "ok", "ranks": len(ranks) or 1, "rank_pids": ranks,
                                 "rank_hosts": hosts})
        return JSONResponse({"status": "unhealthy", "error": state.worker.error, "rank_pids": ranks,
                             "rank_hosts": hosts}, status_code=503)

    async def metrics(request: Request):
        e = state.engine
        lines = []
        for name, kind, help_, value in (
            ("llmctl_requests_running", "gauge", "Requests in the running batch.", len(e.running)),
            ("llmctl_requests_waiting", "gauge", "Requests waiting for a slot.", state.waiting()),
            ("llmctl_kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use.", e.cache.used_fraction),
            ("llmctl_generated_tokens_total", "counter", "Generated tokens.", e.stats["generated_tokens"]),
            ("llmctl_prompt_tokens_total", "counter", "Prompt tokens.", e.stats["prompt_tokens"]),
            ("llmctl_prompt_tokens_shared_total", "counter",
             "Prompt tokens a sample of n/best_of took from a sibling's KV blocks instead of computing.",
             e.stats.get("shared_prompt_tokens", 0)),
            ("llmctl_prefix_cache_queries_total", "counter",
             "Tokens of the sequences that looked their prompt up in the prefix cache.",
             e.stats.get("prefix_cache_queries", 0)),
            ("llmctl_prefix_cache_hits_total", "counter",
             "Tokens whose KV blocks the prefix cache held (not computed again).",
             e.stats.get("prefix_cache_hits", 0)),
            ("llmctl_computed_tokens_total", "counter",
             "Tokens run through the model (prompt chunks, recomputation, decodes).",
             e.stats.get("computed_tokens", 0)),
            ("llmctl_preemptions_total", "counter", "Sequences preempted (recomputed).", e.stats["preemptions"]),
            ("llmctl_requests_rejected_total", "counter", "Requests answered 429.", state.rejected),
            ("llmctl_healthy", "gauge", "1 while every engine rank is alive.", int(state.worker.healthy)),
            ("llmctl_requests_failed_total", "counter", "Requests that failed alone (the engine carried on).",
             e.stats.get("failed", 0)),
            ("llmctl_engine_restarts_total", "counter", "Engines rebuilt after a failure.",
             state.restarter.restarts if state.restarter else 0),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += ["# HELP llmctl_requests_total Requests answered, by endpoint and HTTP status "
                  "(a stream that fails after its head counts as its 200).",
                  "# TYPE llmctl_requests_total counter"]
        lines += [f'llmctl_requests_total{{endpoint="{ep}",status="{st}"}} {c}'
                  for (ep, st), c in sorted(state.requests.items())]
        for h in (state.ttft, state.itl, state.e2e, state.queue):
            lines += h.render()
        lines += getattr(state.worker, "metric_lines", list)()  # per-replica counters (MPI dp mode)
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def release(request: Request):
        """Test hooks only: let a held engine step again (llmctl.serve.testhooks)."""
        state.engine.test_hooks.release()
        return JSONResponse({"released": True})

    async def http_error(request: Request, exc: HTTPException):
        """Starlette's own errors (unknown route 404, wrong method 405) in OpenAI's shape."""
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.url.path} does not take {request.method}"}.get(exc.status_code, exc.detail)
        return err(ApiError(exc.status_code, message, code=kind), headers=exc.headers)

    async def server_error(request: Request, exc: Exception):
        # A bug: the traceback goes to the log (uvicorn), the client gets JSON, not text/plain.
        return err(ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for fn in on_shutdown:
            fn()

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model_info, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if state.test_hooks:
        routes.append(Route("/_test/release", release, methods=["POST"]))
    return Starlette(lifespan=lifespan, routes=routes,
                     exception_handlers={HTTPException: http_error, Exception: server_error})
