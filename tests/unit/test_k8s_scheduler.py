"""The Kubernetes backend's kubectl calls: apply the whole manifest, delete every object
it made, read the Job's or the Deployment's state, and collect every pod's log.

kubectl is replaced by a function that records its argv and answers as the API
server would (jsonpath output recorded from `kubectl get -o jsonpath`).
"""

from __future__ import annotations

import json
import shutil

import pytest

from llmctl.jobs.golden import GOLDEN_DIR
from llmctl.jobs.rundir import RunDir
from llmctl.schedulers import k8s

K8S_DIR = GOLDEN_DIR / "k8s-h100" / "k8s"


@pytest.fixture
def kubectl(monkeypatch):
    """Calls are recorded in .calls; `.answer` (a function of argv) gives the output."""
    class Fake:
        calls: list[list[str]] = []
        answer = staticmethod(lambda argv: "")

    def run_command(argv, what, timeout=60):
        Fake.calls.append(list(argv))
        return Fake.answer(argv)

    monkeypatch.setattr(k8s, "run_command", run_command)
    Fake.calls = []
    return Fake


def run_for(tmp_path, kind: str) -> RunDir:
    run = RunDir(tmp_path / kind)
    run.logs.mkdir(parents=True)
    data = json.loads((K8S_DIR / f"{kind}.spec.json").read_text())
    data["run_dir"] = str(run.path)
    run.spec_file.write_text(json.dumps(data))
    shutil.copy(K8S_DIR / f"{kind}.yaml", run.script("k8s"))
    return run


@pytest.mark.parametrize("kind,deleted", [
    ("train", ["service/train-demo", "job/train-demo"]),
    ("eval", ["job/eval-demo"]),
    ("serve-persistent", ["service/serve-persistent-demo", "deployment/serve-persistent-demo"]),
])
def test_cancel_deletes_every_object_of_the_manifest(tmp_path, kubectl, kind, deleted):
    run = run_for(tmp_path, kind)
    name = deleted[-1].split("/")[1]
    k8s.SCHEDULER.cancel(run, f"llm-training/{name}")
    (argv,) = kubectl.calls
    assert argv[:2 + len(deleted)] == ["kubectl", "delete", *deleted]
    assert argv[2 + len(deleted):] == ["-n", "llm-training", "--ignore-not-found", "--cascade=foreground",
                                       "--wait=false"]
    assert run.cancelled_file.exists()


def test_submit_applies_the_whole_file(tmp_path, kubectl, monkeypatch):
    run = run_for(tmp_path, "serve-persistent")
    monkeypatch.setattr(k8s.shutil, "which", lambda name: "/usr/bin/" + name)
    spec = run.load_spec()
    assert k8s.SCHEDULER.submit(run, spec) == "llm-training/serve-persistent-demo"
    assert kubectl.calls == [["kubectl", "apply", "-f", str(run.script("k8s"))]]


@pytest.mark.parametrize("out,state,restarts,reason", [
    ("train-demo||||", "PENDING", 0, None),
    ("train-demo|2|||", "RUNNING", 0, None),
    # a preempted pod's peer failed once and was retried: still running
    ("train-demo|2||1|", "RUNNING", 1, None),
    ("train-demo||2||", "COMPLETED", 0, None),
    ("train-demo|||2|BackoffLimitExceeded", "FAILED", 2, "BackoffLimitExceeded"),
    ("train-demo|||1|PodFailurePolicy", "FAILED", 1, "PodFailurePolicy"),
    ("train-demo||||DeadlineExceeded", "TIMEOUT", 0, "DeadlineExceeded"),
])
def test_job_status_reads_the_jobs_conditions(tmp_path, kubectl, out, state, restarts, reason):
    run = run_for(tmp_path, "train")
    kubectl.answer = staticmethod(lambda argv: out)
    st = k8s.SCHEDULER.status(run, "llm-training/train-demo")
    assert (st.state, st.restarts, st.detail.get("reason")) == (state, restarts, reason)
    assert kubectl.calls[0][:4] == ["kubectl", "get", "job", "train-demo"]


@pytest.mark.parametrize("out,state", [
    ("serve-persistent-demo||1|ReplicaSetUpdated|", "PENDING"),   # loading the model
    ("serve-persistent-demo|1|1|NewReplicaSetAvailable|", "RUNNING"),
])
def test_deployment_status_is_running_while_a_pod_is_ready(tmp_path, kubectl, out, state):
    run = run_for(tmp_path, "serve-persistent")
    kubectl.answer = staticmethod(lambda argv: out)
    st = k8s.SCHEDULER.status(run, "llm-training/serve-persistent-demo")
    assert st.state == state and not st.done
    assert kubectl.calls[0][:4] == ["kubectl", "get", "deployment", "serve-persistent-demo"]


def test_deleted_objects_read_cancelled(tmp_path, kubectl):
    run = run_for(tmp_path, "serve-persistent")
    kubectl.answer = staticmethod(lambda argv: "serve-persistent-demo|1|1||")
    k8s.SCHEDULER.cancel(run, "llm-training/serve-persistent-demo")
    assert k8s.SCHEDULER.status(run, "llm-training/serve-persistent-demo").state == "COMPLETING"
    kubectl.answer = staticmethod(lambda argv: "")
    assert k8s.SCHEDULER.status(run, "llm-training/serve-persistent-demo").state == "CANCELLED"


def test_logs_come_from_every_pod_by_the_instance_label(tmp_path, kubectl):
    import yaml

    run = run_for(tmp_path, "train")
    kubectl.answer = staticmethod(lambda argv: "[pod/train-demo-0-abcde/train] step 1\n")
    (path,) = k8s.SCHEDULER.log_files(run, "llm-training/train-demo")
    assert path.read_text() == "[pod/train-demo-0-abcde/train] step 1\n"
    (argv,) = kubectl.calls
    assert argv[:5] == ["kubectl", "logs", "-n", "llm-training", "-l"]
    assert "--tail=-1" in argv and "--prefix" in argv
    key, value = argv[5].split("=")
    job = list(yaml.safe_load_all(run.script("k8s").read_text()))[-1]
    assert job["spec"]["template"]["metadata"]["labels"][key] == value
