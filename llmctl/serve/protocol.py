"""OpenAI API shapes: request bodies -> (prompt ids, SamplingParams); results -> responses.

Shared by the HTTP server and the batch job, so that a batch line answers
exactly what `POST /v1/completions` would. Errors follow OpenAI's shape
{"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional

from llmctl.serve.sequence import SamplingParams


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type_: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _num(body, key, default, kind, lo=None, hi=None):
    v = body.get(key, default)
    if v is None:
        v = default
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ApiError(400, f"{key} must be an integer", key)
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise ApiError(400, f"{key} must be a number", key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {v}", key)
    return kind(v)


def sampling_params(body: dict, max_tokens_limit: int) -> SamplingParams:
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise ApiError(400, "stop must be a string or a list of up to 4 non-empty strings", "stop")
    if _num(body, "n", 1, int, 1, 1) != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "seed must be an integer", "seed")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return SamplingParams(
        max_tokens=_num(body, key, 16, int, 1, max_tokens_limit),
        temperature=_num(body, "temperature", 1.0, float, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, float, 0.0, 1.0) or 1e-9,
        top_k=_num(body, "top_k", 0, int, 0, None), seed=seed, stop=stop,
        ignore_eos=bool(body.get("ignore_eos", False)))


def prompt_text(body: dict, chat: bool) -> str:
    from llmctl.export.hf import render_chat

    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ApiError(400, "messages must be a non-empty list", "messages")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
                raise ApiError(400, f"messages[{i}].role must be system, user, assistant or developer",
                               f"messages[{i}].role")
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise ApiError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
            clean.append({"role": m["role"], "content": content})
        return render_chat(clean)
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str):
        raise ApiError(400, "prompt must be a string", "prompt")
    return p


def encode(tokenizer, text: str, max_prompt_tokens: int) -> list[int]:
    if tokenizer is None:
        raise ApiError(400, "this artifact has no tokenizer.json; it cannot take text prompts")
    ids = tokenizer.encode(text).ids
    if len(ids) > max_prompt_tokens:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; the limit is {max_prompt_tokens}", "prompt",
                       code="context_length_exceeded")
    if not ids:
        raise ApiError(400, "the prompt is empty", "prompt")
    return ids


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(seq) -> dict[str, int]:
    return {"prompt_tokens": len(seq.prompt_ids), "completion_tokens": len(seq.output_ids),
            "total_tokens": len(seq.prompt_ids) + len(seq.output_ids)}


def response(seq, rid: str, model: str, chat: bool) -> dict[str, Any]:
    base = {"id": rid, "created": int(time.time()), "model": model, "usage": usage(seq)}
    if chat:
        return {**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": seq.text},
            "finish_reason": seq.finish_reason, "logprobs": None}]}
    return {**base, "object": "text_completion", "choices": [{
        "index": 0, "text": seq.text, "finish_reason": seq.finish_reason, "logprobs": None}]}


def chunk(rid: str, model: str, chat: bool, delta: str, finish: Optional[str], first: bool) -> dict[str, Any]:
    base = {"id": rid, "created": int(time.time()), "model": model}
    if chat:
        d: dict[str, Any] = {"content": delta} if delta or not finish else {}
        if first:
            d["role"] = "assistant"
        return {**base, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}]}
    return {**base, "object": "text_completion",
            "choices": [{"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}]}


def stable_text(seq) -> str:
    """Text safe to stream now: hold back a partial UTF-8 character and a possible stop prefix."""
    text = seq.text
    if seq.finished:
        return text
    hold = max((len(s) - 1 for s in seq.params.stop), default=0)
    if hold:
        text = text[:max(len(text) - hold, 0)]
    return text.rstrip("\ufffd")
