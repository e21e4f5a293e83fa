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
