"""The OpenAI-compatible HTTP server (Starlette on uvicorn) in front of the engine thread.

Routes: POST /v1/completions, POST /v1/chat/completions (both stream as
server-sent events with `stream: true`), GET /v1/models, /health, /metrics
(Prometheus text). A request is refused with 429 + Retry-After when `max_queue`
requests already wait, so overload is an answer, not a timeout; a client that
disconnects aborts its sequence, which frees its KV blocks at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Optional

from llmctl.serve.protocol import ApiError

MAX_BODY = 1 << 20  # bytes of one request body
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
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


class ServerState:
    def __init__(self, worker, model_name: str, settings, api_key: Optional[str]):
        self.worker, self.engine, self.model_name = worker, worker.engine, model_name
        self.settings, self.api_key = settings, api_key
        self.rejected = 0
        self.ttft = Histogram("llmctl_time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = Histogram("llmctl_inter_token_latency_seconds", "Time between output tokens.", ITL_BUCKETS)

    def waiting(self) -> int:
        return len(self.engine.waiting) + self.engine.inbox.qsize()


def build_app(state: ServerState, on_shutdown=()):
    """The Starlette app; `on_shutdown` callables run at a graceful stop (uvicorn re-raises
    SIGTERM afterwards, so code after `Server.run` would never run)."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    def err(e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status in (429, 503) else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    def authorise(request: Request) -> None:
        if state.api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), state.api_key.encode())):
            raise ApiError(401, "invalid or missing API key", type_="authentication_error",
                           code="invalid_api_key")

    async def read_body(request: Request) -> dict:
        size = request.headers.get("content-length")
        if size and int(size) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def observe(seq, last: list) -> None:
        if seq.first_token_at and last[0] is None:
            state.ttft.observe(seq.first_token_at - seq.arrival)
            last[0], last[1] = seq.first_token_at, 1
        elif seq.last_token_at and len(seq.output_ids) > last[1]:
            gap = (seq.last_token_at - last[0]) / (len(seq.output_ids) - last[1])
            state.itl.observe(gap)
            last[0], last[1] = seq.last_token_at, len(seq.output_ids)

    async def generate(request: Request, chat: bool):
        from llmctl.serve import protocol as P
        from llmctl.serve.sequence import Sequence

        try:
            authorise(request)
            body = await read_body(request)
            if not state.worker.healthy:
                raise ApiError(503, f"the engine is down: {state.worker.error}", type_="server_error")
            params = P.sampling_params(body, state.settings.max_tokens_limit, chat)
            ids = P.prompt_ids(body, chat, state.engine.tokenizer, state.settings.max_prompt_tokens,
                               state.engine.cfg.vocab_size)
            seq = Sequence(ids, params)
            problem = state.engine.check(seq)
            if problem:
                raise ApiError(400, problem, code="context_length_exceeded")
            if state.waiting() >= state.settings.max_queue:
                state.rejected += 1
                raise ApiError(429, "the server is busy: the request queue is full; retry later",
                               type_="rate_limit_error", code="queue_full")
        except ApiError as e:
            return err(e)
        rid, model = P.new_id(chat), state.model_name
        q: asyncio.Queue = asyncio.Queue()
        state.worker.listen(seq, asyncio.get_running_loop(), q, every_token=bool(body.get("stream")))
        state.worker.submit(seq)
        last = [None, 0]

        def failed() -> ApiError:
            return ApiError(500, f"generation failed: {state.worker.error or seq.finish_reason}",
                            type_="server_error")

        if body.get("stream"):
            async def events():
                sent, first = 0, True
                try:
                    while True:
                        await q.get()
                        observe(seq, last)
                        if seq.finish_reason == "error":
                            yield f"data: {json.dumps(failed().body())}\n\n"
                            return
                        # Read `finished` before the text: the engine thread may finish the
                        # sequence in between, and the held-back tail must still go out.
                        done = seq.finished
                        text = P.stable_text(seq)
                        if len(text) > sent or first:
                            yield f"data: {json.dumps(P.chunk(rid, model, chat, text[sent:], None, first))}\n\n"
                            sent, first = len(text), False
                        if done:
                            yield f"data: {json.dumps(P.chunk(rid, model, chat, '', seq.finish_reason, False))}\n\n"
                            if (body.get("stream_options") or {}).get("include_usage"):
                                yield f"data: {json.dumps({'id': rid, 'object': 'chat.completion.chunk' if chat else 'text_completion', 'created': int(time.time()), 'model': model, 'choices': [], 'usage': P.usage(seq)})}\n\n"
                            yield "data: [DONE]\n\n"
                            return
                finally:  # also runs when the client goes away: free its slots
                    state.worker.unlisten(seq)
                    if not seq.finished:
                        state.worker.abort(seq)
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        try:
            while not seq.finished:
                try:
                    await asyncio.wait_for(q.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return PlainTextResponse("", status_code=499)
                observe(seq, last)
        finally:
            state.worker.unlisten(seq)
            if not seq.finished:
                state.worker.abort(seq)
        if seq.finish_reason == "error":
            return err(failed())
        return JSONResponse(P.response(seq, rid, model, chat, state.engine.tokenizer))

    async def completions(request: Request):
        return await generate(request, chat=False)

    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    async def models(request: Request):
        try:
            authorise(request)
        except ApiError as e:
            return err(e)
        return JSONResponse({"object": "list", "data": [
            {"id": state.model_name, "object": "model", "created": 0, "owned_by": "llmctl"}]})

    async def health(request: Request):
        ranks = getattr(state.engine, "rank_pids", None) or []
        if state.worker.healthy:
            return JSONResponse({"status": "ok", "ranks": len(ranks) or 1, "rank_pids": ranks})
        return JSONResponse({"status": "unhealthy", "error": state.worker.error, "rank_pids": ranks},
                            status_code=503)

    async def metrics(request: Request):
        e = state.engine
        lines = []
        for name, kind, help_, value in (
            ("llmctl_requests_running", "gauge", "Requests in the running batch.", len(e.running)),
            ("llmctl_requests_waiting", "gauge", "Requests waiting for a slot.", state.waiting()),
            ("llmctl_kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use.", e.cache.used_fraction),
            ("llmctl_tokens_per_second", "gauge", "Generated tokens/s over the last 10 s.",
             state.worker.tokens_per_second()),
            ("llmctl_generated_tokens_total", "counter", "Generated tokens.", e.stats["generated_tokens"]),
            ("llmctl_prompt_tokens_total", "counter", "Prompt tokens.", e.stats["prompt_tokens"]),
            ("llmctl_preemptions_total", "counter", "Sequences preempted (recomputed).", e.stats["preemptions"]),
            ("llmctl_requests_rejected_total", "counter", "Requests answered 429.", state.rejected),
            ("llmctl_healthy", "gauge", "1 while every engine rank is alive.", int(state.worker.healthy)),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += state.ttft.render() + state.itl.render()
        lines += getattr(state.worker, "metric_lines", list)()  # per-replica counters (MPI dp mode)
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for fn in on_shutdown:
            fn()

    return Starlette(lifespan=lifespan, routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])
