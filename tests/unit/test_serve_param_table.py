"""docs/serving.md's table of request fields and llmctl/serve/protocol.py cannot drift:
the same fields per endpoint, every field refused where the table says refused (and
accepted at the value the row names), every no-effect field accepted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmctl.serve import protocol as P

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
ENDPOINTS = {"completions": (False,), "chat": (True,), "both": (False, True)}


def table() -> dict[tuple[str, bool], str]:
    """{(field, chat): status} from the table whose header is `| field | endpoints | status |`."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| field | endpoints | status |"))
    rows: dict[tuple[str, bool], str] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        names, where, status = re.findall(r"`([^`]+)`", cells[0]), cells[1], cells[2]
        if not names:
            assert cells[0] == "anything else" and status == "refused", line
            continue
        assert where in ENDPOINTS and status in ("supported", "refused", "no effect"), line
        for name in names:
            for chat in ENDPOINTS[where]:
                assert (name, chat) not in rows, f"{name} twice in the table"
                rows[(name, chat)] = status
    return rows


def test_the_table_lists_exactly_the_fields_protocol_knows():
    rows = table()
    for chat in (False, True):
        listed = {name.split(".")[0] for (name, c) in rows if c == chat}
        assert listed == P.FIELDS[chat], ("chat" if chat else "completions", listed ^ P.FIELDS[chat])
        options = {name.split(".", 1)[1] for (name, c) in rows if c == chat and "." in name}
        assert options == P.STREAM_OPTIONS


def test_every_field_the_openai_client_sends_is_known():
    """The official client's request types follow OpenAI's API reference: a field added
    there must get a row (supported, refused or no effect), never an "Unrecognized" 400."""
    openai = pytest.importorskip("openai")
    from openai.types import completion_create_params as completions
    from openai.types.chat import chat_completion_stream_options_param as stream_options
    from openai.types.chat import completion_create_params as chat

    assert openai.__version__
    assert set(completions.CompletionCreateParamsBase.__annotations__) <= P.FIELDS[False]
    assert set(chat.CompletionCreateParamsBase.__annotations__) <= P.FIELDS[True]
    assert set(stream_options.ChatCompletionStreamOptionsParam.__annotations__) == P.STREAM_OPTIONS


# A value each refused field cannot take, and the value that asks for nothing (accepted).
REFUSED = {
    "suffix": ("tail", ""),
    "response_format": ({"type": "json_object"}, {"type": "text"}),
    "tools": ([{"type": "function", "function": {"name": "f"}}], []),
    "functions": ([{"name": "f"}], []),
    "tool_choice": ("required", "auto"),
    "function_call": ({"name": "f"}, "none"),
    "modalities": (["text", "audio"], ["text"]),
    "store": (True, False),
    "audio": ({"voice": "alloy", "format": "wav"}, None),
    "prediction": ({"type": "content", "content": "x"}, None),
    "web_search_options": ({}, None),
    "reasoning_effort": ("low", None),
    "verbosity": ("low", None),
    "moderation": ({"model": "omni-moderation-latest"}, None),
}
NO_EFFECT = {"user": "u-1", "metadata": {"k": "v"}, "service_tier": "auto", "prompt_cache_key": "k",
             "safety_identifier": "s", "parallel_tool_calls": True, "llmctl_test": "hold",
             "prompt_cache_options": {"mode": "implicit", "ttl": "30m"}, "prompt_cache_retention": "24h",
             "stream_options.include_obfuscation": True}


def body_with(name: str, value) -> dict:
    if name.startswith("stream_options."):
        return {"stream": True, "stream_options": {name.split(".", 1)[1]: value}}
    return {name: value}


def test_refused_fields_are_refused_by_name_and_accepted_when_they_ask_nothing():
    rows = table()
    refused = {name for (name, _), status in rows.items() if status == "refused"}
    assert refused == set(REFUSED)
    for (name, chat), status in rows.items():
        if status != "refused":
            continue
        bad, harmless = REFUSED[name]
        with pytest.raises(P.ApiError) as e:
            P.sampling_params(body_with(name, bad), 64, chat=chat)
        assert e.value.status == 400 and e.value.param == name and name in e.value.message
        if harmless is not None:
            P.sampling_params(body_with(name, harmless), 64, chat=chat)


def test_no_effect_fields_are_accepted_and_type_checked():
    rows = table()
    assert {name for (name, _), status in rows.items() if status == "no effect"} == set(NO_EFFECT)
    for (name, chat), status in rows.items():
        if status == "no effect":
            params = P.sampling_params(body_with(name, NO_EFFECT[name]), 64, chat=chat)
            assert params.test_hook is None  # llmctl_test only with the server's test hooks on
            if name != "llmctl_test":  # a wrong type is still a 400 naming the field
                with pytest.raises(P.ApiError) as e:
                    P.sampling_params(body_with(name, 12345), 64, chat=chat)
                assert e.value.param.split(".")[-1] == name.split(".")[-1]


def test_anything_else_is_refused_by_name():
    for chat in (False, True):
        with pytest.raises(P.ApiError) as e:
            P.sampling_params({"max_token": 5}, 64, chat=chat)
        assert e.value.param == "max_token" and e.value.code == "unrecognized_argument"
    with pytest.raises(P.ApiError) as e:
        P.sampling_params({"stream": True, "stream_options": {"continuous_usage_stats": True}}, 64)
    assert e.value.param == "stream_options.continuous_usage_stats"
    with pytest.raises(P.ApiError) as e:
        P.sampling_params({"stream_options": {"include_usage": True}}, 64)
    assert e.value.param == "stream_options" and "stream is true" in e.value.message
