"""Property-based: no input makes a config loader raise anything but ConfigError."""

from __future__ import annotations

import json

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmctl.config import KINDS, model_class
from llmctl.config.base import parse_text, validate_data
from llmctl.errors import ConfigError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False), st.text(max_size=20))
keys = st.one_of(st.sampled_from(["name", "layers", "hidden", "heads", "gpu", "count", "devices", "limits",
                                  "partitions", "scheduler", "default_partition", "model", "optimizer",
                                  "parallel", "sources", "tasks", "inputs", "parallelism", "rope", "type",
                                  "estimated_flops", "memory_gb", "tp", "pp", "dp"]),
                 st.text(min_size=1, max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=5)),
                      max_leaves=25)
documents = st.dictionaries(keys, values, max_size=8)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", list(KINDS))
@FUZZ
@given(doc=documents)
def test_structured_documents(kind, doc):
    try:
        validate_data(doc, model_class(kind), "fuzz.toml")
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)


@FUZZ
@given(text=st.text(max_size=200), fmt=st.sampled_from(["toml", "json"]))
def test_arbitrary_text(text, fmt):
    try:
        data = parse_text(text, fmt, f"fuzz.{fmt}")
    except ConfigError:
        return
    assert isinstance(data, dict)


@FUZZ
@given(doc=documents, fmt=st.sampled_from(["toml", "json"]), cut=st.integers(0, 400))
def test_truncated_files(tmp_path_factory, doc, fmt, cut):
    from llmctl.config.base import load_config

    def clean(v):  # TOML has no null
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [clean(x) for x in v if x is not None]
        return v

    try:
        text = tomli_w.dumps(clean(doc)) if fmt == "toml" else json.dumps(doc)
    except (TypeError, ValueError):
        return  # tomli_w refuses some shapes (e.g. mixed arrays); not our loader's concern
    path = tmp_path_factory.mktemp("fuzz") / f"cfg.{fmt}"
    path.write_text(text[:cut])
    for kind in ("model", "site", "train"):
        try:
            load_config(path, model_class(kind))
        except ConfigError:
            pass


# --- hostile values, shaped like the models (issue 13): accepted and valid, or ConfigError -----

import math
import typing

from pydantic import BaseModel

from llmctl.config.base import BIDI_CONTROLS, scan_values

HOSTILE_CHARS = "\x00\x1b\x7f\x85\u202e\u2066\u200b\ufeff\ud800\n\t"
hostile_text = st.text(alphabet=st.sampled_from(list("ab-_.7 /") + list(HOSTILE_CHARS)), max_size=12)
hostile_scalars = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**63 - 1, 2**63, 2**64, -2**63 - 1, 10**30]),
    st.integers(-2**70, 2**70),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e30, 1e308, -0.0, 5e-324, 2.0, 0.5]),
    st.floats(), hostile_text, st.text(max_size=8),
)


def _shaped(ann: typing.Any, depth: int) -> st.SearchStrategy:
    """Values for annotation `ann`: mostly of its shape, with hostile scalars anywhere."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        if depth <= 0:
            return hostile_scalars
        fields = {name: _shaped(f.annotation, depth - 1) for name, f in ann.model_fields.items()}
        return st.fixed_dictionaries({}, optional=fields)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (list, tuple):
        return st.lists(st.one_of(_shaped(args[0], depth - 1), hostile_scalars), max_size=3)
    if origin is dict:
        return st.dictionaries(st.one_of(st.text(max_size=6), hostile_text),
                               st.one_of(_shaped(args[1], depth - 1), hostile_scalars), max_size=3)
    if origin is typing.Union:
        return st.one_of(*[_shaped(a, depth) for a in args if a is not type(None)], hostile_scalars)
    return hostile_scalars


def _floats(value: typing.Any) -> typing.Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _floats(v)


HOSTILE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", list(KINDS))
@HOSTILE
@given(data=st.data())
def test_hostile_values_are_refused_or_valid(kind, data):
    model = model_class(kind)
    doc = data.draw(_shaped(model, 4))
    try:
        cfg = validate_data(doc, model, "fuzz.toml")
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        for p in e.problems:  # the message is safe to print: hostile characters only escaped
            assert not any(ch in BIDI_CONTROLS or ch in "\x00\x1b\x7f\x85" for ch in p), p
            assert p.encode("utf-8")
        return
    out = cfg.to_data()
    assert all(math.isfinite(x) for x in _floats(out))
    assert scan_values(out) == []
    again = validate_data(out, model, "again.toml")  # what was accepted round-trips
    assert again.to_data() == out


@HOSTILE
@given(value=hostile_scalars, key=st.sampled_from(["layers", "hidden", "heads", "vocab_size", "name",
                                                   "max_seq_len", "norm_eps", "bias", "kv_heads"]),
       fmt=st.sampled_from(["json", "toml"]))
def test_hostile_model_files(tmp_path_factory, value, key, fmt):
    from llmctl.config.base import load_config

    doc = {"name": "m", "layers": 2, "hidden": 64, "heads": 4, "vocab_size": 100}
    if value is None:
        doc.pop(key, None)
    else:
        doc[key] = value
    try:
        text = json.dumps(doc) if fmt == "json" else tomli_w.dumps(doc)
    except (ValueError, UnicodeEncodeError):
        return  # the writer itself refuses it (e.g. a lone surrogate in TOML)
    path = tmp_path_factory.mktemp("hostile") / f"m.{fmt}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_config(path, model_class("model"))
    except ConfigError as e:
        assert e.problems
        return
    assert 0 < cfg.layers <= 10_000 and type(cfg.layers) is int and math.isfinite(cfg.norm_eps)
    assert scan_values(cfg.to_data()) == []
