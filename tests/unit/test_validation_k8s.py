"""Kubernetes names in a site-config follow DNS-1123, as the API server will insist (issue 13, item 5)."""

from __future__ import annotations

import pytest

from llmctl.config.site import SiteConfig
from llmctl.errors import ConfigError
from llmctl.resources import data_dir
from llmctl.sites import load_site

K8S = (data_dir("site-configs") / "k8s-h100.toml").read_text()


def site(tmp_path, old, new):
    assert old in K8S
    p = tmp_path / "k8s-h100.toml"
    p.write_text(K8S.replace(old, new), encoding="utf-8")
    return p


def problems(tmp_path, old, new):
    with pytest.raises(ConfigError) as e:
        load_site(str(site(tmp_path, old, new)))
    return e.value.problems


@pytest.mark.parametrize("namespace", [
    "llm\\nkind: Pod",      # the reported one: a YAML document smuggled in
    "LLM",                  # upper case
    "llm_training",         # underscore
    "-llm", "llm-",         # must start and end alphanumeric
    "llm.training",         # a namespace is a label, not a subdomain
    "a" * 64,               # at most 63
    "",
    "llm\\n",               # a regex `$` would let a trailing newline through
])
def test_namespace_is_a_dns1123_label(tmp_path, namespace):
    (line,) = problems(tmp_path, 'namespace = "llm-training"', f'namespace = "{namespace}"')
    assert line.startswith("kubernetes.namespace: ") and "DNS-1123 label" in line
    assert "\n" not in line  # shown escaped


@pytest.mark.parametrize("key,value", [
    ("service_account", "LLM-trainer"), ("service_account", "trainer\\nx: y"),
    ("pvc", "llm_shared"), ("pvc", "a" * 254), ("pvc", "shared."),
    ("image_pull_secret", "Regcred"), ("image_pull_secret", "reg cred"),
])
def test_object_names_are_dns1123_subdomains(tmp_path, key, value):
    (line,) = _bad(tmp_path, key, value)
    assert line.startswith(f"kubernetes.{key}: ") and "DNS-1123 subdomain" in line


def _bad(tmp_path, key, value):
    text = K8S.replace('service_account = "llm-trainer"\n', "").replace('pvc = "llm-shared"\n', "")
    text = text.replace("[kubernetes]\n", f'[kubernetes]\n{key} = "{value}"\n')
    p = tmp_path / "k8s-h100.toml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_site(str(p))
    return e.value.problems


@pytest.mark.parametrize("value", ["gpu", "nvidia.com/", "/gpu", "Nvidia.com/gpu", "nvidia.com/gpu/x",
                                   "nvidia.com/g pu"])
def test_gpu_resource_is_a_prefixed_qualified_name(tmp_path, value):
    (line,) = problems(tmp_path, 'gpu_resource = "nvidia.com/gpu"', f'gpu_resource = "{value}"')
    assert line.startswith("kubernetes.gpu_resource: ") and "qualified name" in line


@pytest.mark.parametrize("selector,words", [
    ('{ "nvidia.com/gpu.product" = "H100\\nx" }', "label value"),
    ('{ "nvidia.com/gpu.product" = "NVIDIA H100" }', "label value"),
    ('{ "bad key" = "x" }', "qualified name"),
    ('{ "Example.com/x" = "y" }', "qualified name"),
])
def test_node_selector_keys_and_values(tmp_path, selector, words):
    lines = problems(tmp_path, 'node_selector = { "nvidia.com/gpu.product" = "NVIDIA-H100-80GB-HBM3" }',
                     f"node_selector = {selector}")
    assert any(x.startswith("kubernetes.node_selector") and words in x for x in lines), lines


@pytest.mark.parametrize("old,new", [
    ('namespace = "llm-training"', 'namespace = "team-a1"'),
    ('pvc = "llm-shared"', 'pvc = "llm.shared.v2"'),
    ('gpu_resource = "nvidia.com/gpu"', 'gpu_resource = "amd.com/gpu"'),
    ('node_selector = { "nvidia.com/gpu.product" = "NVIDIA-H100-80GB-HBM3" }',
     'node_selector = { "kubernetes.io/arch" = "amd64", pool = "" }'),
])
def test_valid_names_load(tmp_path, old, new):
    cfg, _ = load_site(str(site(tmp_path, old, new)))
    assert isinstance(cfg, SiteConfig) and cfg.kubernetes is not None


def test_cli_site_check_refuses_the_reported_namespace(tmp_path, cli):
    p = site(tmp_path, 'namespace = "llm-training"', 'namespace = "llm\\nkind: Pod"')
    r = cli("site", "check", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "kubernetes.namespace: 'llm\\nkind: Pod' is not a DNS-1123 label" in r.stderr
