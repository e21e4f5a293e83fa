"""OpenAI API shapes: request bodies -> (prompt ids, SamplingParams); results -> responses.

Shared by the HTTP server and the batch job, so that a batch line answers
exactly what `POST /v1/completions` would. Errors follow OpenAI's shape
{"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, Optional

from llmctl.serve.sequence import SamplingParams

SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1


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
    # NaN passes every comparison below: it must be refused by name.
    if isinstance(v, float) and not math.isfinite(v):
        raise ApiError(400, f"{key} must be a finite number, got {v}", key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        shown = v if not isinstance(v, int) or abs(v) < 10**20 else f"an integer of {len(str(v))} digits"
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {shown}", key)
    return kind(v)


def _flag(body, key) -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(400, f"{key} must be true or false", key)
    return v


def _optional(body, key, kinds, what: str) -> None:
    """A field we accept and ignore must still have its type (a client bug shows)."""
    v = body.get(key)
    if v is not None and not isinstance(v, kinds):
        raise ApiError(400, f"{key} must be {what}", key)


TEST_HOOKS = ("hold", "fail-step", "fail-forward", "fail-engine")


def sampling_params(body: dict, max_tokens_limit: int, chat: bool = False,
                    test_hooks: bool = False) -> SamplingParams:
    """The request's SamplingParams, every field checked for type and range (400 otherwise).
    `test_hooks` (LLMCTL_SERVE_TEST_HOOKS=1 only): honour `llmctl_test` (llmctl.serve.testhooks)."""
    stop = body.get("stop")
    if stop is None:
        stop = []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise ApiError(400, "stop must be a string or a list of up to 4 non-empty strings", "stop")
    if _num(body, "n", 1, int, 1, 1) != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ApiError(400, "seed must be an integer", "seed")
        if not SEED_MIN <= seed <= SEED_MAX:  # what torch.Generator.manual_seed takes
            raise ApiError(400, "seed must be an integer from -2**63 to 2**64-1", "seed")
        seed %= 1 << 64  # a negative seed is its two's complement, as torch reads it
    stream = _flag(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    _flag(opts or {}, "include_usage")
    _optional(body, "model", (str,), "a string")
    _optional(body, "user", (str,), "a string")
    _optional(body, "logit_bias", (dict,), "an object")
    for key in ("presence_penalty", "frequency_penalty"):  # accepted, not applied
        _num(body, key, 0.0, float, -2.0, 2.0)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    logprobs, echo = None, False
    if not chat:  # legacy completions: logprobs is a count (OpenAI allows at most 5)
        if body.get("logprobs") is not None:
            logprobs = _num(body, "logprobs", 0, int, 0, 5)
        echo = _flag(body, "echo")
        _optional(body, "suffix", (str,), "a string")
        if _num(body, "best_of", 1, int, 1, 1) != 1:
            raise ApiError(400, "only best_of=1 is supported", "best_of")
        if stream and (echo or logprobs is not None):
            raise ApiError(400, "echo and logprobs are not supported with stream", "stream")
    else:  # chat: logprobs is a flag, top_logprobs a count; neither is returned yet
        _flag(body, "logprobs")
        _num(body, "top_logprobs", 0, int, 0, 20)
    # max_tokens 0 only makes sense to score the prompt (echo), as lm-evaluation-harness does.
    max_tokens = _num(body, key, 16, int, 0 if echo else 1, max_tokens_limit)
    hook = body.get("llmctl_test") if test_hooks else None
    if hook is not None and hook not in TEST_HOOKS:
        raise ApiError(400, f"llmctl_test must be one of {', '.join(TEST_HOOKS)}", "llmctl_test")
    return SamplingParams(
        max_tokens=max_tokens, logprobs=logprobs, echo=echo,
        temperature=_num(body, "temperature", 1.0, float, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, float, 0.0, 1.0) or 1e-9,
        top_k=_num(body, "top_k", 0, int, 0, None), seed=seed, stop=stop,
        ignore_eos=_flag(body, "ignore_eos"), test_hook=hook)


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
            if isinstance(content, list):  # content parts: text only
                content = "".join(_text_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(content))
            if not isinstance(content, str):
                raise ApiError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
            clean.append({"role": m["role"], "content": content})
        return render_chat(clean)
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str):
        raise ApiError(400, "prompt must be a string or a list of token ids", "prompt")
    return p


def _text_part(p, where: str) -> str:
    if not isinstance(p, dict) or p.get("type", "text") != "text" or not isinstance(p.get("text"), str):
        raise ApiError(400, f"{where} must be {{\"type\": \"text\", \"text\": \"...\"}} "
                            "(only text content is supported)", where)
    return p["text"]


def prompt_ids(body: dict, chat: bool, tokenizer, max_prompt_tokens: int, vocab_size: int) -> list[int]:
    """The prompt as token ids: completions also take a list of ids (or a list of one such list)."""
    p = body.get("prompt")
    if not chat and isinstance(p, list) and len(p) == 1 and isinstance(p[0], list):
        p = p[0]
    if not chat and isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ApiError(400, f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})",
                           "prompt")
        if len(p) > max_prompt_tokens:
            raise ApiError(400, f"the prompt has {len(p)} tokens; the limit is {max_prompt_tokens}", "prompt",
                           code="context_length_exceeded")
        return list(p)
    return encode(tokenizer, prompt_text(body, chat), max_prompt_tokens)


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


def response(seq, rid: str, model: str, chat: bool, tokenizer=None) -> dict[str, Any]:
    base = {"id": rid, "created": int(time.time()), "model": model, "usage": usage(seq)}
    if chat:
        return {**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": seq.text},
            "finish_reason": seq.finish_reason, "logprobs": None}]}
    prompt = _decode(tokenizer, seq.prompt_ids) if seq.params.echo else ""
    return {**base, "object": "text_completion", "choices": [{
        "index": 0, "text": prompt + seq.text, "finish_reason": seq.finish_reason,
        "logprobs": legacy_logprobs(seq, tokenizer) if seq.params.logprobs is not None else None}]}


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False) if tokenizer is not None and ids else ""


def legacy_logprobs(seq, tokenizer) -> dict[str, Any]:
    """OpenAI's legacy completions `logprobs`: tokens, token_logprobs, top_logprobs,
    text_offset; with echo the prompt's tokens come first, the very first one with
    null (nothing precedes it)."""
    def name(i: int) -> str:
        return _decode(tokenizer, [i]) if tokenizer is not None else str(i)

    ids: list[int] = []
    lps: list[Optional[float]] = []
    tops: list[Optional[dict[str, float]]] = []
    if seq.params.echo:
        ids += seq.prompt_ids
        for pos in range(len(seq.prompt_ids)):
            got = seq.prompt_logprobs.get(pos)
            lps.append(got[0] if got else None)
            tops.append({name(i): v for i, v in got[1]} if got else None)
    for tok, (lp, top) in zip(seq.output_ids, seq.output_logprobs):
        ids.append(tok)
        lps.append(lp)
        tops.append({name(i): v for i, v in top})
    tokens = [name(i) for i in ids]
    # Character offsets into the returned text (after the prompt when it is not echoed).
    offsets, at = [], 0 if seq.params.echo else len(_decode(tokenizer, seq.prompt_ids))
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


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
