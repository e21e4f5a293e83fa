"""Kubernetes manifests: what a cluster would schedule, checked offline.

Every rendered manifest validates against the Kubernetes OpenAPI schema
(kubernetes-validate, strict: unknown fields are errors), and the parts the
schema cannot see are checked here: the headless Service that gives an indexed
Job's pods their DNS names, selectors that match the pods' labels, the server's
Service port and probes on the container's port, and requests that fit what a
node can allocate.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmctl.jobs import golden
from llmctl.resources import data_dir
from llmctl.schedulers import get_scheduler
from llmctl.schedulers.k8s import HEALTH_PATH, k8s_name, objects
from llmctl.sites import load_site

kv = pytest.importorskip("kubernetes_validate")
K8S_VERSION = "1.30"
K8S_DIR = golden.GOLDEN_DIR / "k8s-h100" / "k8s"


def manifests():
    return {rel: text for rel, text in golden.render_all().items() if rel.suffix == ".yaml"}


def docs(kind: str) -> dict[str, dict]:
    """The golden manifest for `kind`, by object kind (each kind appears once)."""
    found = [d for d in yaml.safe_load_all((K8S_DIR / f"{kind}.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in found}
    assert len(by_kind) == len(found)
    return by_kind


def pod_of(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    (c,) = pod_of(workload)["containers"]
    return c


def test_every_rendered_manifest_validates():
    found = manifests()
    assert len(found) == 4
    for rel, text in found.items():
        for d in yaml.safe_load_all(text):
            kv.validate(d, K8S_VERSION, strict=True)


def test_each_kind_renders_the_objects_it_needs():
    assert [d["kind"] for d in yaml.safe_load_all((K8S_DIR / "train.yaml").read_text())] == ["Service", "Job"]
    assert [d["kind"] for d in yaml.safe_load_all((K8S_DIR / "serve-persistent.yaml").read_text())] == [
        "Service", "Deployment"]
    for kind in ("eval", "serve-batch"):  # one pod: nothing to meet, nothing to serve
        assert [d["kind"] for d in yaml.safe_load_all((K8S_DIR / f"{kind}.yaml").read_text())] == ["Job"]


def test_cancel_deletes_exactly_the_objects_the_manifest_makes():
    for site, backend, kind, spec in golden.cases():
        if backend != "k8s":
            continue
        text = get_scheduler("k8s").render(spec).script
        made = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in yaml.safe_load_all(text)]
        assert made == objects(spec), kind
        assert all(d["metadata"]["namespace"] == spec.kubernetes.namespace for d in yaml.safe_load_all(text))
        # and the header says so, for whoever reviews the file
        assert f"# Objects (`llmctl job cancel` deletes them): {' '.join(made)} in namespace" in text


def test_validator_rejects_a_broken_manifest():
    job = docs("train")["Job"]
    job["spec"]["completions"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(job, K8S_VERSION, strict=True)
    svc = docs("serve-persistent")["Service"]
    svc["spec"]["ports"][0]["target_port"] = "http"  # a misspelt field: strict refuses it
    with pytest.raises(kv.ValidationError):
        kv.validate(svc, K8S_VERSION, strict=True)


def test_multi_node_job_rendezvous_matches_pod_names():
    d = docs("train")
    svc, job = d["Service"], d["Job"]
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    spec, pod = job["spec"], pod_of(job)
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    # Pod i's hostname is NAME-i; with subdomain = a headless Service in the same namespace,
    # NAME-i.SERVICE.NAMESPACE.svc resolves to it, ready or not.
    assert pod["subdomain"] == svc["metadata"]["name"] and svc["metadata"]["namespace"] == ns
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    env = {e["name"]: e["value"] for e in container(job)["env"]}
    assert env["MASTER_ADDR"] == f"{name}-0.{svc['metadata']['name']}.{ns}.svc"
    assert [p["port"] for p in svc["spec"]["ports"]] == [int(env["MASTER_PORT"])]
    command = container(job)["command"][2]
    assert '--node-rank="$JOB_COMPLETION_INDEX"' in command and "--nnodes=2 " in command
    assert '--master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT"' in command


def test_jobs_retry_disrupted_pods_and_nothing_else():
    for kind, backoff in (("train", 1), ("eval", 0), ("serve-batch", 0)):
        job = docs(kind)["Job"]
        assert pod_of(job)["restartPolicy"] == "Never"  # podFailurePolicy needs it
        assert job["spec"]["podFailurePolicy"]["rules"] == [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
        # train: 2 nodes; the peer that loses a preempted pod fails once and is retried
        assert job["spec"]["backoffLimit"] == backoff, kind
        assert job["spec"]["activeDeadlineSeconds"] == 7 * 86400
    assert pod_of(docs("train")["Job"])["terminationGracePeriodSeconds"] == 120


def test_selectors_match_the_pods_labels():
    for kind in ("train", "eval", "serve-batch", "serve-persistent"):
        d = docs(kind)
        workload = d.get("Job") or d["Deployment"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        name = workload["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == name and labels["app.kubernetes.io/component"] == kind
        if "Service" in d:
            sel = d["Service"]["spec"]["selector"]
            assert sel and sel.items() <= labels.items(), kind
        if "Deployment" in d:
            sel = d["Deployment"]["spec"]["selector"]["matchLabels"]
            assert sel and sel.items() <= labels.items()


def test_persistent_server_is_a_deployment_behind_a_service_with_probes():
    d = docs("serve-persistent")
    svc, dep = d["Service"], d["Deployment"]
    c = container(dep)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert pod_of(dep)["restartPolicy"] == "Always" and "activeDeadlineSeconds" not in pod_of(dep)
    (port,) = c["ports"]
    assert port["name"] == "http" and port["containerPort"] == 8080
    assert "--port 8080" in c["command"][2] and "--host 0.0.0.0" in c["command"][2]
    assert svc["spec"]["type"] == "ClusterIP" and "clusterIP" not in svc["spec"]
    (sp,) = svc["spec"]["ports"]
    assert sp == {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": HEALTH_PATH, "port": "http"}, probe
    startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup >= 20 * 60  # loading a 70B model from a network filesystem
    assert dep["spec"]["progressDeadlineSeconds"] > startup
    assert c["livenessProbe"]["timeoutSeconds"] >= 5 and c["readinessProbe"]["timeoutSeconds"] >= 5


def test_the_probes_get_200_from_the_server_the_deployment_starts(tmp_path):
    """Run the Deployment's own command (a tiny artifact, a free port) and probe it as the kubelet would."""
    import os
    import shlex
    import subprocess
    import sys
    import time

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    import servekit as K

    c = container(docs("serve-persistent")["Deployment"])
    argv = shlex.split(c["command"][2])
    assert argv[:2] == ["exec", "/usr/bin/python3"]
    port = K.free_port()
    argv = [sys.executable] + argv[2:]
    argv[argv.index("--artifact") + 1] = str(K.tiny_artifact(tmp_path / "a"))
    argv[argv.index("--port") + 1] = str(port)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", LLMCTL_RUN_DIR=str(tmp_path))
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        probe = c["startupProbe"]["httpGet"]
        assert probe["port"] == c["ports"][0]["name"]
        url = f"http://127.0.0.1:{port}{probe['path']}"
        end = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end, "the startup probe would never pass"
            time.sleep(0.2)
        for name in ("readinessProbe", "livenessProbe"):
            assert httpx.get(f"http://127.0.0.1:{port}{c[name]['httpGet']['path']}", timeout=2).status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_server_port_follows_the_programs_port():
    from llmctl.jobs.launch import serve_program
    from llmctl.jobs.resolve import JobRequest, resolve

    site, _ = load_site(str(data_dir("site-configs") / "k8s-h100.toml"))
    rd = "/mnt/llm-shared/runs/s"
    req = JobRequest(kind="serve-persistent", backend="k8s", run_dir=rd, name="s",
                     program=serve_program("serve-persistent", rd, "/mnt/llm-shared/a", None, None, 9000, None))
    found = list(yaml.safe_load_all(get_scheduler("k8s").render(resolve(site, req)).script))
    svc, dep = found
    assert container(dep)["ports"][0]["containerPort"] == 9000 == svc["spec"]["ports"][0]["port"]


def test_requests_fit_what_a_node_can_allocate():
    site, _ = load_site(str(data_dir("site-configs") / "k8s-h100.toml"))
    part = site.partition()
    rc, rm = site.kubernetes.reserved(part.cpus_per_node, part.memory_gb)
    for kind in ("train", "eval", "serve-batch", "serve-persistent"):
        d = docs(kind)
        r = container(d.get("Job") or d["Deployment"])["resources"]
        assert r["requests"] == r["limits"], kind  # Guaranteed QoS
        assert 0 < int(r["requests"]["cpu"]) <= part.cpus_per_node - rc, kind
        assert 0 < int(r["requests"]["memory"].removesuffix("Gi")) <= part.memory_gb - rm, kind
        assert 0 < r["requests"]["nvidia.com/gpu"] <= part.gpus_per_node, kind


@pytest.mark.parametrize("name,expected", [
    ("train-demo", "train-demo"), ("Train Run_1", "train-run-1"), ("7b-sft", "job-7b-sft"),
    ("x\n- injected: true", "x-injected-true"), ("!!!", "job"), ("a" * 80, "a" * 52),
    ("job." + "1" * 47 + "-x", "job-" + "1" * 47), ("1" + "-" * 60, "job-1"),
])
def test_job_names_become_dns_labels(name, expected):
    assert k8s_name(name) == expected


def test_any_job_name_becomes_a_dns_1035_label():
    import re

    from hypothesis import given, strategies as st

    label = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

    @given(st.text())
    def check(name):
        out = k8s_name(name)
        assert label.fullmatch(out) and len(out) <= 52, (name, out)
        assert len(out + "-99") <= 63  # an indexed pod's hostname

    check()


def test_a_renamed_job_says_where_its_name_came_from():
    from llmctl.jobs.resolve import JobRequest, resolve

    site, _ = load_site(str(data_dir("site-configs") / "k8s-h100.toml"))
    req = JobRequest(kind="eval", backend="k8s", run_dir="/mnt/llm-shared/runs/e", name="My Eval\nkind: Pod",
                     program=["-c", "pass"])
    text = get_scheduler("k8s").render(resolve(site, req)).script
    assert '# Named from the job name "My Eval\\nkind: Pod" (Kubernetes names are DNS labels)' in text
    (job,) = yaml.safe_load_all(text)
    assert job["metadata"]["name"] == "my-eval-kind-pod"
    kv.validate(job, K8S_VERSION, strict=True)
