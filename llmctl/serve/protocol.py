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

# Every field OpenAI's API reference lists for the endpoint, and our extensions. Anything
# else is refused with 400 naming it, as OpenAI does ("Unrecognized request argument
# supplied"), rather than ignored: a misspelt `max_token` must not pass unnoticed.
COMMON = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed", "stop",
          "stream", "stream_options", "presence_penalty", "frequency_penalty", "logit_bias", "user",
          "logprobs",
          # extensions (vLLM's names): top_k, ignore_eos, return_token_ids; llmctl_test (test hooks)
          "top_k", "ignore_eos", "return_token_ids", "llmctl_test"}
FIELDS = {
    False: COMMON | {"prompt", "echo", "suffix", "best_of"},
    True: COMMON | {"messages", "top_logprobs", "response_format", "tools", "tool_choice",
                    "parallel_tool_calls", "functions", "function_call", "audio", "modalities",
                    "prediction", "web_search_options", "reasoning_effort", "verbosity", "metadata",
                    "store", "service_tier", "prompt_cache_key", "safety_identifier", "moderation",
                    "prompt_cache_options", "prompt_cache_retention"},
}
# stream_options' keys: include_usage is honoured; include_obfuscation (random padding
# against length side channels on OpenAI's TLS streams) is accepted with no effect.
STREAM_OPTIONS = {"include_usage", "include_obfuscation"}
MAX_CHOICES = 64  # n (or best_of) times the number of prompts


def _refuse_unless(body, key, ok, what: str) -> None:
    """A field we cannot honour: accepted only at a value that asks for nothing."""
    v = body.get(key)
    if v is not None and not ok(v):
        raise ApiError(400, f"{key} is not supported by this server ({what})", key)


def check_fields(body: dict, chat: bool) -> None:
    """Unknown fields and those the engine cannot honour: 400 naming the field."""
    for key in body:
        if key not in FIELDS[chat]:
            raise ApiError(400, f"Unrecognized request argument supplied: {key}", key,
                           code="unrecognized_argument")
    if not chat:
        _optional(body, "suffix", (str,), "a string")
        _refuse_unless(body, "suffix", lambda v: v == "", "insertion needs a fill-in-the-middle model")
        return
    _refuse_unless(body, "response_format", lambda v: v == {"type": "text"},
                   'only {"type": "text"}: JSON mode and JSON schemas are not implemented')
    _refuse_unless(body, "tools", lambda v: v == [], "no tool calling")
    _refuse_unless(body, "functions", lambda v: v == [], "no function calling")
    _refuse_unless(body, "tool_choice", lambda v: v in ("none", "auto"), "no tool calling")
    _refuse_unless(body, "function_call", lambda v: v in ("none", "auto"), "no function calling")
    _optional(body, "parallel_tool_calls", (bool,), "true or false")
    _refuse_unless(body, "audio", lambda v: False, "text only")
    _refuse_unless(body, "modalities", lambda v: v == ["text"], 'text only: ["text"]')
    _refuse_unless(body, "prediction", lambda v: False, "no predicted outputs")
    _refuse_unless(body, "web_search_options", lambda v: False, "no web search")
    _refuse_unless(body, "reasoning_effort", lambda v: False, "not a reasoning model")
    _refuse_unless(body, "verbosity", lambda v: False, "no verbosity control")
    _refuse_unless(body, "store", lambda v: v is False, "completions are not stored")
    _refuse_unless(body, "moderation", lambda v: False, "no moderation model")
    _optional(body, "prompt_cache_options", (dict,), "an object")
    if body.get("prompt_cache_retention") not in (None, "in_memory", "24h"):
        raise ApiError(400, 'prompt_cache_retention must be "in_memory" or "24h"', "prompt_cache_retention")
    _optional(body, "metadata", (dict,), "an object")
    for key in ("service_tier", "prompt_cache_key", "safety_identifier"):
        _optional(body, key, (str,), "a string")


def logit_bias(body, vocab_size: Optional[int]) -> Optional[dict[int, float]]:
    """OpenAI's `logit_bias`: {"token id": bias from -100 to 100}."""
    raw = body.get("logit_bias")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ApiError(400, "logit_bias must be an object", "logit_bias")
    if len(raw) > 300:
        raise ApiError(400, "logit_bias takes at most 300 tokens", "logit_bias")
    out = {}
    for k, v in raw.items():
        if not (isinstance(k, str) and k.isascii() and k.isdigit() and len(k) < 12):
            raise ApiError(400, f"logit_bias keys must be token ids as strings, got {k!r}", "logit_bias")
        tok = int(k)
        if vocab_size is not None and tok >= vocab_size:
            raise ApiError(400, f"logit_bias token id {tok} is outside the vocabulary (0..{vocab_size - 1})",
                           "logit_bias")
        out[tok] = _num({"logit_bias": v}, "logit_bias", 0.0, float, -100.0, 100.0)
    return out or None


def sampling_params(body: dict, max_tokens_limit: int, chat: bool = False,
                    test_hooks: bool = False, vocab_size: Optional[int] = None) -> SamplingParams:
    """The request's SamplingParams, every field checked for type and range (400 otherwise).
    `test_hooks` (LLMCTL_SERVE_TEST_HOOKS=1 only): honour `llmctl_test` (llmctl.serve.testhooks)."""
    check_fields(body, chat)
    stop = body.get("stop")
    if stop is None:
        stop = []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise ApiError(400, "stop must be a string or a list of up to 4 non-empty strings", "stop")
    n = _num(body, "n", 1, int, 1, MAX_CHOICES)
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
    for k in opts or {}:
        if k not in STREAM_OPTIONS:
            raise ApiError(400, f"Unrecognized request argument supplied: stream_options.{k}",
                           f"stream_options.{k}", code="unrecognized_argument")
        _flag(opts, k)
    if opts is not None and not stream:  # OpenAI's and vLLM's answer too
        raise ApiError(400, "stream_options is only allowed when stream is true", "stream_options")
    _optional(body, "model", (str,), "a string")
    _optional(body, "user", (str,), "a string")
    bias = logit_bias(body, vocab_size)
    presence = _num(body, "presence_penalty", 0.0, float, -2.0, 2.0)
    frequency = _num(body, "frequency_penalty", 0.0, float, -2.0, 2.0)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    logprobs, echo, best_of = None, False, n
    if not chat:  # legacy completions: logprobs is a count (OpenAI allows at most 5)
        if body.get("logprobs") is not None:
            logprobs = _num(body, "logprobs", 0, int, 0, 5)
        echo = _flag(body, "echo")
        best_of = _num(body, "best_of", n, int, 1, MAX_CHOICES)
        if best_of < n:
            raise ApiError(400, f"best_of ({best_of}) must be at least n ({n})", "best_of")
        if stream and (echo or logprobs is not None):
            raise ApiError(400, "echo and logprobs are not supported with stream", "stream")
        if stream and best_of > n:
            raise ApiError(400, "best_of greater than n cannot stream (the best are known at the end)",
                           "best_of")
    else:  # chat: logprobs is a flag, top_logprobs a count
        top = _num(body, "top_logprobs", 0, int, 0, 20)
        if _flag(body, "logprobs"):
            logprobs = top
        elif body.get("top_logprobs") is not None:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        if stream and logprobs is not None:
            raise ApiError(400, "logprobs are not supported with stream", "logprobs")
    if _flag(body, "return_token_ids") and stream:
        raise ApiError(400, "return_token_ids is not supported with stream", "return_token_ids")
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
        ignore_eos=_flag(body, "ignore_eos"), test_hook=hook, logit_bias=bias,
        presence_penalty=presence, frequency_penalty=frequency, cumulative=best_of > n)


def choice_counts(body: dict, chat: bool) -> tuple[int, int]:
    """(n, best_of) of a request already checked by sampling_params."""
    n = body.get("n") or 1
    best_of = (body.get("best_of") or n) if not chat else n
    return n, best_of


def sequences(body: dict, chat: bool, params: SamplingParams, tokenizer, max_prompt_tokens: int,
              vocab_size: int, context: int) -> list:
    """The request's sequences: best_of (= n unless asked) samples of each prompt, in choice
    order; sample j of a seeded request uses seed + j, so the samples differ yet repeat."""
    import dataclasses

    from llmctl.serve.sequence import Sequence

    prompts = prompt_list(body, chat, tokenizer, max_prompt_tokens, vocab_size)
    n, best_of = choice_counts(body, chat)
    if len(prompts) * best_of > MAX_CHOICES:
        raise ApiError(400, f"{len(prompts)} prompts x {best_of} samples is over {MAX_CHOICES} sequences",
                       "n")
    explicit = body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None
    seqs = []
    for i, ids in enumerate(prompts):
        p = fit_context(ids, params, context, explicit, chat)
        for j in range(best_of):
            q = p if p.seed is None and j == 0 else dataclasses.replace(
                p, seed=None if p.seed is None else (p.seed + j) % (1 << 64))
            seq = Sequence(ids, q)
            seq.index, seq.prompt_index = i * n + j, i
            if j:  # the other samples take the first one's prompt KV blocks (llmctl.serve.engine)
                seq.prompt_source = seqs[-j]
            seqs.append(seq)
    return seqs


def fit_context(ids: list[int], params: SamplingParams, context: int, explicit: bool, chat: bool):
    """prompt + max_tokens must fit the model's context: 400 with the numbers, as OpenAI and
    vLLM answer. An unstated max_tokens (16) shrinks to what is left instead."""
    import dataclasses

    room = context - len(ids)
    if not explicit and 1 <= room < params.max_tokens:
        return dataclasses.replace(params, max_tokens=room)
    if len(ids) + params.max_tokens > context:
        where = "messages" if chat else "prompt"
        raise ApiError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{len(ids) + params.max_tokens} tokens ({len(ids)} in the {where}, "
                            f"{params.max_tokens} in the completion). Please reduce the length of the "
                            f"{where} or completion.",
                       "max_tokens" if explicit else where, code="context_length_exceeded")
    return params


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
        raise ApiError(400, "prompt must be a string, a list of strings, a list of token ids or a list "
                            "of such lists", "prompt")
    return p


def _text_part(p, where: str) -> str:
    if not isinstance(p, dict) or p.get("type", "text") != "text" or not isinstance(p.get("text"), str):
        raise ApiError(400, f"{where} must be {{\"type\": \"text\", \"text\": \"...\"}} "
                            "(only text content is supported)", where)
    return p["text"]


def prompt_list(body: dict, chat: bool, tokenizer, max_prompt_tokens: int, vocab_size: int) -> list[list[int]]:
    """Completions take a string, a list of strings, a list of token ids or a list of such
    lists: one prompt each, in order (OpenAI's choice index is prompt * n + sample)."""
    p = body.get("prompt")
    if not chat and isinstance(p, list) and len(p) > 1 and (
            all(isinstance(x, str) for x in p) or all(isinstance(x, list) for x in p)):
        if len(p) > MAX_CHOICES:
            raise ApiError(400, f"at most {MAX_CHOICES} prompts in one request", "prompt")
        return [prompt_ids({"prompt": [x]}, False, tokenizer, max_prompt_tokens, vocab_size) for x in p]
    return [prompt_ids(body, chat, tokenizer, max_prompt_tokens, vocab_size)]


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


def usage(seqs) -> dict[str, int]:
    """Exact usage: each prompt counted once, every generated token (best_of's extra
    samples included, as OpenAI bills them)."""
    seqs = seqs if isinstance(seqs, list) else [seqs]
    prompts = {getattr(s, "prompt_index", 0): len(s.prompt_ids) for s in seqs}
    p, c = sum(prompts.values()), sum(len(s.output_ids) for s in seqs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def chosen(seqs: list, n: int) -> list:
    """The choices to return, by index: with best_of > n the n samples of each prompt with
    the highest cumulative log-probability (vLLM's rule), re-indexed prompt * n + rank."""
    if all(not s.params.cumulative for s in seqs):
        return sorted(seqs, key=lambda s: s.index)
    out = []
    for i in sorted({s.prompt_index for s in seqs}):
        best = sorted((s for s in seqs if s.prompt_index == i), key=lambda s: -s.cumulative_logprob)[:n]
        for j, s in enumerate(sorted(best, key=lambda s: s.index)):
            s.index = i * n + j
            out.append(s)
    return out


def response(seqs, rid: str, model: str, chat: bool, tokenizer=None, n: int = 1,
             token_ids: bool = False, created: Optional[int] = None) -> dict[str, Any]:
    seqs = seqs if isinstance(seqs, list) else [seqs]
    base = {"id": rid, "created": created or int(time.time()), "model": model, "usage": usage(seqs)}
    choices = []
    for seq in chosen(seqs, n):
        if chat:
            c = {"index": seq.index, "message": {"role": "assistant", "content": seq.text},
                 "finish_reason": seq.finish_reason,
                 "logprobs": chat_logprobs(seq, tokenizer) if seq.params.logprobs is not None else None}
        else:
            prompt = _decode(tokenizer, seq.prompt_ids) if seq.params.echo else ""
            c = {"index": seq.index, "text": prompt + seq.text, "finish_reason": seq.finish_reason,
                 "logprobs": legacy_logprobs(seq, tokenizer) if seq.params.logprobs is not None else None}
        if token_ids:  # vLLM's return_token_ids
            c["token_ids"] = list(seq.output_ids)
            if not chat:
                c["prompt_token_ids"] = list(seq.prompt_ids)
        choices.append(c)
    if chat:
        out = {**base, "object": "chat.completion", "choices": choices}
        if token_ids:
            out["prompt_token_ids"] = list(seqs[0].prompt_ids)
        return out
    return {**base, "object": "text_completion", "choices": choices}


def chat_logprobs(seq, tokenizer) -> dict[str, Any]:
    """Chat's `logprobs`: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    def entry(i: int, lp: float) -> dict[str, Any]:
        t = _decode(tokenizer, [i]) if tokenizer is not None else str(i)
        return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8", "surrogatepass"))}

    content = []
    for tok, (lp, top) in zip(seq.output_ids, seq.output_logprobs):
        content.append({**entry(tok, lp), "top_logprobs": [entry(i, v) for i, v in top]})
    return {"content": content, "refusal": None}


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False) if tokenizer is not None and ids else ""


def legacy_logprobs(seq, tokenizer) -> dict[str, Any]:
    """OpenAI's legacy completions `logprobs`: tokens, token_logprobs, top_logprobs,
    text_offset; with echo the prompt's tokens come first, the very first one with
    null (nothing precedes it)."""
    def name(i: int) -> str:
        return _decode(tokenizer, [i]) if tokenizer is not None else str(i)

    def by_name(top: list[tuple[int, float]]) -> dict[str, float]:
        # top_logprobs is keyed by text, and ids that are parts of one UTF-8 character all
        # decode to U+FFFD: keep the likeliest (topk lists it first), else the top one is
        # lost and lm-eval's is_greedy (token logprob == max of the dict) turns false.
        out: dict[str, float] = {}
        for i, v in top:
            out.setdefault(name(i), v)
        return out

    ids: list[int] = []
    lps: list[Optional[float]] = []
    tops: list[Optional[dict[str, float]]] = []
    if seq.params.echo:
        ids += seq.prompt_ids
        for pos in range(len(seq.prompt_ids)):
            got = seq.prompt_logprobs.get(pos)
            lps.append(got[0] if got else None)
            tops.append(by_name(got[1]) if got else None)
    for tok, (lp, top) in zip(seq.output_ids, seq.output_logprobs):
        ids.append(tok)
        lps.append(lp)
        tops.append(by_name(top))
    tokens = [name(i) for i in ids]
    # Character offsets into the returned text (after the prompt when it is not echoed).
    offsets, at = [], 0 if seq.params.echo else len(_decode(tokenizer, seq.prompt_ids))
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chunk(rid: str, model: str, chat: bool, delta: str, finish: Optional[str], first: bool,
          index: int = 0) -> dict[str, Any]:
    base = {"id": rid, "created": int(time.time()), "model": model}
    if chat:
        d: dict[str, Any] = {"content": delta} if delta or not finish else {}
        if first:
            d["role"] = "assistant"
        return {**base, "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": d, "finish_reason": finish, "logprobs": None}]}
    return {**base, "object": "text_completion",
            "choices": [{"index": index, "text": delta, "finish_reason": finish, "logprobs": None}]}


def stable_text(seq) -> str:
    """Text safe to stream now: hold back a partial UTF-8 character and a possible stop prefix."""
    text = seq.text
    if seq.finished:
        return text
    hold = max((len(s) - 1 for s in seq.params.stop), default=0)
    if hold:
        text = text[:max(len(text) - hold, 0)]
    return text.rstrip("\ufffd")
