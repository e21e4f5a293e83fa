"""OpenAI request parsing and response shapes, batch files, and the KV block pool."""

from __future__ import annotations

import json

import pytest

from llmctl.errors import LlmctlError
from llmctl.serve import protocol as P
from llmctl.serve.batch import answered, read_requests
from llmctl.serve.kvcache import PagedKVCache
from llmctl.serve.sequence import SamplingParams, Sequence


def test_sampling_params_from_body():
    p = P.sampling_params({"max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 3, "seed": 1,
                           "stop": "\n"}, max_tokens_limit=100)
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop) == (7, 0.0, 0.5, 3, 1, ["\n"])
    assert P.sampling_params({"max_completion_tokens": 9}, 100).max_tokens == 9


@pytest.mark.parametrize("body,param", [
    ({"max_tokens": 101}, "max_tokens"), ({"max_tokens": "3"}, "max_tokens"),
    ({"temperature": 3}, "temperature"), ({"n": 65}, "n"), ({"stop": ["a"] * 5}, "stop"),
    ({"seed": 1.5}, "seed"), ({"top_p": True}, "top_p"),
])
def test_bad_fields_name_the_parameter(body, param):
    with pytest.raises(P.ApiError) as e:
        P.sampling_params(body, max_tokens_limit=100)
    assert e.value.status == 400 and e.value.param == param
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_chat_prompt_rendering_and_checks():
    text = P.prompt_text({"messages": [{"role": "system", "content": "s"},
                                       {"role": "user", "content": [{"type": "text", "text": "u"}]}]}, chat=True)
    assert text == "<|system|>\ns\n<|user|>\nu\n<|assistant|>\n"
    with pytest.raises(P.ApiError, match="messages"):
        P.prompt_text({"messages": []}, chat=True)
    assert P.prompt_text({"prompt": ["only"]}, chat=False) == "only"


def test_streamed_text_holds_back_partial_characters_and_stop_prefixes():
    s = Sequence([1], SamplingParams(stop=["END"]))
    s.text = "hello EN"
    assert P.stable_text(s) == "hello "  # "EN" may become "END"
    s.params.stop = []
    s.text = "abc\ufffd"
    assert P.stable_text(s) == "abc"
    s.finish_reason = "length"
    assert P.stable_text(s) == "abc\ufffd"


def test_batch_file_errors_name_line_and_key(tmp_path):
    f = tmp_path / "in.jsonl"
    good = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
    f.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    with pytest.raises(LlmctlError, match=r"in.jsonl:3: custom_id: 'a' appears twice"):
        read_requests(f)
    f.write_text(json.dumps({**good, "method": "GET"}) + "\n")
    with pytest.raises(LlmctlError, match=r"in.jsonl:1: method"):
        read_requests(f)
    f.write_text("{nope\n")
    with pytest.raises(LlmctlError, match=r"in.jsonl:1: not valid JSON"):
        read_requests(f)


def test_answered_cuts_a_torn_last_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"custom_id": "a"}\n{"custom_id": "b"}\n{"custom_i')
    assert answered(out) == {"a", "b"}
    assert out.read_text().endswith('"b"}\n')
    assert answered(tmp_path / "none.jsonl") == set()


def test_kv_blocks_are_reserved_and_returned():
    pytest.importorskip("torch")
    cache = PagedKVCache(layers=1, kv_heads=1, head_dim=2, num_blocks=4, block_size=4)
    a, b = Sequence([1], SamplingParams()), Sequence([1], SamplingParams())
    assert cache.reserve(a, 9) and len(a.blocks) == 3
    assert not cache.reserve(b, 8) and b.blocks == []  # nothing taken when short
    assert cache.reserve(b, 4) and cache.used_fraction == 1.0
    assert cache.slots(a, 3, 6) == [a.blocks[0] * 4 + 3, a.blocks[1] * 4, a.blocks[1] * 4 + 1]
    cache.release(a)
    assert len(cache.free) == 3 and a.blocks == []


@pytest.mark.parametrize("body,param", [
    ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"top_p": float("nan")}, "top_p"), ({"presence_penalty": float("-inf")}, "presence_penalty"),
    ({"seed": 2**64}, "seed"), ({"seed": -(2**63) - 1}, "seed"), ({"seed": 10**400}, "seed"),
    ({"max_tokens": 10**400}, "max_tokens"), ({"top_k": -1}, "top_k"), ({"n": True}, "n"),
    ({"stream": 1}, "stream"), ({"ignore_eos": "yes"}, "ignore_eos"), ({"echo": 0}, "echo"),
    ({"stop": 5}, "stop"), ({"stop": ""}, "stop"), ({"stream_options": "x"}, "stream_options"),
    ({"stream_options": {"include_usage": 1}}, "include_usage"), ({"model": ["m"]}, "model"),
    ({"best_of": 65}, "best_of"), ({"n": 3, "best_of": 2}, "best_of"), ({"logit_bias": []}, "logit_bias"),
    ({"logit_bias": {"x": 1}}, "logit_bias"), ({"logit_bias": {"1": 101}}, "logit_bias"),
    ({"suffix": "tail"}, "suffix"), ({"max_token": 5}, "max_token"), ({"response_format": {}}, "response_format"),
    ({"llmctl_test": "hold"}, None),  # ignored without test hooks: no error at all
])
def test_every_field_is_checked(body, param):
    if param is None:
        assert P.sampling_params(body, 100).test_hook is None
        return
    with pytest.raises(P.ApiError) as e:
        P.sampling_params(body, max_tokens_limit=100)
    assert e.value.status == 400 and e.value.param == param, e.value.message


def test_seeds_cover_64_bits_and_negatives_wrap():
    assert P.sampling_params({"seed": 2**64 - 1}, 100).seed == 2**64 - 1
    assert P.sampling_params({"seed": -1}, 100).seed == 2**64 - 1
    assert P.sampling_params({"seed": -(2**63)}, 100).seed == 2**63


def test_chat_flags_and_text_parts():
    assert P.sampling_params({"logprobs": True, "top_logprobs": 3}, 100, chat=True).logprobs == 3
    assert P.sampling_params({"logprobs": False}, 100, chat=True).logprobs is None
    with pytest.raises(P.ApiError) as e:
        P.sampling_params({"logprobs": 2}, 100, chat=True)
    assert e.value.param == "logprobs"
    for part in ({"type": "image_url", "image_url": {}}, {"type": "text", "text": 5}, "text"):
        with pytest.raises(P.ApiError) as e:
            P.prompt_text({"messages": [{"role": "user", "content": [part]}]}, chat=True)
        assert e.value.param == "messages[0].content[0]"


@pytest.mark.parametrize("raw,needle", [
    (b'{"temperature": NaN}', "NaN"), (b'{"top_p": -Infinity}', "-Infinity"),
    (b"[" * 100_000, "nests deeper"), (b"\xff\xfe{}", "not valid JSON"), (b"{", "not valid JSON"),
])
def test_parse_json_refuses_with_400(raw, needle):
    from llmctl.serve.validate import parse_json

    with pytest.raises(P.ApiError) as e:
        parse_json(raw)
    assert e.value.status == 400 and needle in e.value.message


def test_check_tree_names_where():
    from llmctl.serve.validate import MAX_DEPTH, check_tree

    check_tree({"messages": [{"role": "user", "content": [{"type": "text", "text": "ok \u2028 \U0001F600"}]}]})
    with pytest.raises(P.ApiError) as e:
        check_tree({"messages": [{"role": "user", "content": "a\ud800"}]})
    assert e.value.param == "messages[0].content" and "U+D800" in e.value.message
    deep: list = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(P.ApiError, match="nests deeper"):
        check_tree({"prompt": deep})


def test_batch_file_with_nan_or_bad_url_type_is_one_clean_error(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"custom_id": "a", "url": "/v1/completions", "body": {"temperature": NaN}}\n')
    with pytest.raises(LlmctlError, match=r"in.jsonl:1: not valid JSON: NaN"):
        read_requests(f)
    f.write_text('{"custom_id": "a", "url": ["/v1/completions"], "body": {}}\n')
    with pytest.raises(LlmctlError, match=r"in.jsonl:1: url:"):
        read_requests(f)
    f.write_bytes(b'{"custom_id": "a\xff"}\n')
    with pytest.raises(LlmctlError, match="not UTF-8"):
        read_requests(f)


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"), ({"functions": [{"name": "f"}]}, "functions"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"store": True}, "store"), ({"audio": {}}, "audio"),
    ({"modalities": ["audio"]}, "modalities"), ({"best_of": 2}, "best_of"),  # a completions field
    ({"logprobs": True, "stream": True}, "logprobs"),
])
def test_chat_fields_the_engine_cannot_honour_are_refused_by_name(body, param):
    with pytest.raises(P.ApiError) as e:
        P.sampling_params(body, 100, chat=True)
    assert e.value.status == 400 and e.value.param == param, e.value.message


def test_chat_fields_at_values_that_ask_nothing_are_accepted():
    P.sampling_params({"response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
                       "parallel_tool_calls": False, "metadata": {}, "store": False, "user": "u",
                       "modalities": ["text"]}, 100, chat=True)


def test_logit_bias_keys_are_token_ids_inside_the_vocabulary():
    assert P.sampling_params({"logit_bias": {"7": -100, "9": 2.5}}, 100, vocab_size=10).logit_bias == \
        {7: -100.0, 9: 2.5}
    with pytest.raises(P.ApiError) as e:
        P.sampling_params({"logit_bias": {"10": 1}}, 100, vocab_size=10)
    assert e.value.param == "logit_bias" and "vocabulary" in e.value.message


def test_penalties_follow_openais_formula():
    import torch

    from llmctl.serve.sampling import adjust
    from llmctl.serve.sequence import SamplingParams

    logits = torch.zeros(5)
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias={4: -100, 3: 1.5})
    x = adjust(logits, p, [1, 1, 2])
    # mu[j] - c[j] * frequency - (c[j] > 0) * presence, then the bias; -100 bans
    assert x.tolist() == [0.0, -2 * 0.25 - 0.5, -0.25 - 0.5, 1.5, float("-inf")]


def test_prompt_plus_max_tokens_beyond_the_context_names_the_lengths():
    from llmctl.serve.sequence import SamplingParams

    with pytest.raises(P.ApiError) as e:
        P.fit_context(list(range(201)), SamplingParams(max_tokens=200), 256, explicit=True, chat=False)
    assert e.value.status == 400 and e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"
    assert "256" in e.value.message and "401" in e.value.message and "201 in the prompt" in e.value.message
    # an unstated max_tokens (16) shrinks to the room left
    assert P.fit_context(list(range(250)), SamplingParams(max_tokens=16), 256, False, False).max_tokens == 6
