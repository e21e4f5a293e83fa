"""Kubernetes manifests validate offline against the Kubernetes schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmctl.jobs import golden

kv = pytest.importorskip("kubernetes_validate")
K8S_VERSION = "1.30"


def manifests():
    return {rel: text for rel, text in golden.render_all().items() if rel.suffix == ".yaml"}


def test_every_rendered_manifest_validates():
    found = manifests()
    assert len(found) == 4
    for rel, text in found.items():
        docs = [d for d in yaml.safe_load_all(text) if d]
        assert {d["kind"] for d in docs} <= {"Job", "Service"} and any(d["kind"] == "Job" for d in docs)
        for d in docs:
            kv.validate(d, K8S_VERSION, strict=True)


def test_validator_rejects_a_broken_manifest():
    text = next(iter(manifests().values()))
    job = [d for d in yaml.safe_load_all(text) if d["kind"] == "Job"][0]
    job["spec"]["completions"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(job, K8S_VERSION, strict=True)


def test_multi_node_job_rendezvous_matches_pod_names():
    text = Path(golden.GOLDEN_DIR / "k8s-h100/k8s/train.yaml").read_text()
    svc, job = list(yaml.safe_load_all(text))
    name = job["metadata"]["name"]
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] == name
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == f"{name}-0.{name}"
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
