"""docs/grafana/llmctl-serve.json against a live server: every metric its PromQL names is
in the /metrics output of `llmctl serve start` (parsed by prometheus_client), rate() and
increase() only ever see counters or histogram series, histogram_quantile only buckets,
and gauges are read as they are."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "llmctl-serve.json"
NAME = re.compile(r"\bllmctl_[A-Za-z0-9_]+")


def expressions(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{sample name: its family's type} from a live server that has answered a request."""
    art = K.tiny_artifact(tmp_path_factory.mktemp("art"))
    with K.Server(art) as s:
        r = httpx.post(s.url + "/v1/completions", timeout=60,
                       json={"prompt": "def f(x):", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        text = httpx.get(s.url + "/metrics", timeout=10).text
    return {x.name: f.type for f in parser.text_string_to_metric_families(text) for x in f.samples}


def test_every_metric_the_dashboard_names_is_exported(exported):
    dash = json.loads(DASHBOARD.read_text())
    named = {n for e in expressions(dash) for n in NAME.findall(e)}
    assert len(named) >= 15
    missing = sorted(n for n in named if n not in exported)
    assert not missing, f"the dashboard names metrics the server does not export: {missing}"


def test_rates_are_over_counters_and_quantiles_over_buckets(exported):
    dash = json.loads(DASHBOARD.read_text())
    for e in expressions(dash):
        for name in re.findall(r"\b(?:rate|increase)\((llmctl_[A-Za-z0-9_]+)", e):
            assert exported[name] in ("counter", "histogram"), (name, e)
        if "histogram_quantile" in e:
            inner = NAME.findall(e)
            assert inner and all(n.endswith("_bucket") and exported[n] == "histogram" for n in inner), e
            assert "by (le)" in e, e
        for name in NAME.findall(e):
            if exported[name] == "gauge":
                assert not re.search(rf"\b(?:rate|increase)\({name}\b", e), e
    # the list: TTFT, inter-token, e2e, queue, requests by status, tokens/s, KV usage, prefix hits
    text = json.dumps(dash)
    for want in ("llmctl_time_to_first_token_seconds_bucket", "llmctl_inter_token_latency_seconds_bucket",
                 "llmctl_e2e_request_latency_seconds_bucket", "llmctl_request_queue_time_seconds_bucket",
                 "llmctl_requests_total", "llmctl_generated_tokens_total", "llmctl_kv_cache_usage_ratio",
                 "llmctl_prefix_cache_hits_total"):
        assert want in text, want


def test_panels_are_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    for p in dash["panels"]:
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["datasource"]["uid"] == "${datasource}" and "datasource" in variables
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
