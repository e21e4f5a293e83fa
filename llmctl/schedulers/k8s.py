"""Kubernetes: the objects a cluster schedules, in one multi-document manifest.

- train, eval, serve-batch: an indexed batch/v1 Job, one pod per node
  (JOB_COMPLETION_INDEX is the node rank); a multi-node job adds a headless
  Service whose name is the pods' `subdomain`, so pod i is
  `<name>-i.<name>.<namespace>.svc` and torchrun meets on pod 0.
- serve-persistent: an apps/v1 Deployment (one replica) behind a ClusterIP
  Service (port `http`), with startup, readiness and liveness probes on /health.

Every object is named `k8s_name(job name)` and labelled
`app.kubernetes.io/instance=<that name>`: `submit` applies the manifest
(`kubectl apply -f`), `cancel` deletes exactly the objects `objects(spec)` lists,
`status` reads the workload (the Job or the Deployment), `logs` every pod by label.

Validated offline against the Kubernetes schema (kubernetes-validate, in tests);
applied with `kubectl` where it is installed. Without kubectl the manifest stays
in the run folder and submission says how to apply it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.schedulers.base import JobStatus, Scheduler, run_command

# The llmctl server's health endpoint (llmctl/serve/server.py): 200 while every engine
# rank is alive, 503 otherwise; it answers once the model is loaded.
HEALTH_PATH = "/health"
# How long a server may take to load its model before the startup probe gives up.
STARTUP_S = 1800
# `llmctl serve start --port`'s default (llmctl/cli/serve.py).
DEFAULT_PORT = 8080


def k8s_name(name: str) -> str:
    """The job name as a DNS-1035 label (lowercase letters, digits, '-'; starts with a
    letter; at most 52, so that an indexed pod's hostname `<name>-<index>` fits 63).

    Other characters become '-': `Train Run_1` is `train-run-1`. The manifest's
    header names the job name it came from.
    """
    safe = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not safe[:1].isalpha():
        safe = "job-" + safe
    return safe[:52].rstrip("-")


def workload(spec: Any) -> str:
    """The object that runs the pods: a Deployment for a persistent server, else a Job."""
    return "deployment" if spec.kind == "serve-persistent" else "job"


def objects(spec: Any) -> list[str]:
    """Every object the manifest holds, as kubectl's `kind/name`, in manifest order."""
    name = k8s_name(spec.name)
    service = spec.kind == "serve-persistent" or spec.nodes > 1
    return ([f"service/{name}"] if service else []) + [f"{workload(spec)}/{name}"]


def server_port(spec: Any) -> int:
    """The port a persistent server listens on (its program's --port)."""
    argv = list(spec.program)
    if "--port" in argv[:-1]:
        return int(argv[argv.index("--port") + 1])
    return DEFAULT_PORT


class K8sScheduler(Scheduler):
    name = "k8s"
    suffix = ".yaml.j2"

    def submit_argv(self, script: Path) -> list[str]:
        return ["kubectl", "apply", "-f", str(script)]

    def context(self, spec: Any) -> dict[str, Any]:
        q = shlex.quote
        prog = " ".join(q(a) for a in spec.program)
        if spec.launcher == "torchrun":
            # Static rendezvous: pod JOB_COMPLETION_INDEX is node rank, pod 0 hosts the store.
            command = (f"exec {q(spec.python)} -m torch.distributed.run --nnodes={spec.nodes} "
                       f"--nproc-per-node={spec.ranks_per_node} "
                       '--node-rank="$JOB_COMPLETION_INDEX" --master-addr="$MASTER_ADDR" '
                       f'--master-port="$MASTER_PORT" {prog}')
        else:
            command = f"exec {q(spec.python)} {prog}"
        kname = k8s_name(spec.name)
        ns = spec.kubernetes.namespace
        return {"kname": kname, "command": command, "objects": objects(spec),
                "master_addr": f"{kname}-0.{kname}.{ns}.svc" if spec.nodes > 1 else "127.0.0.1",
                "port": server_port(spec) if spec.kind == "serve-persistent" else None,
                "health_path": HEALTH_PATH, "startup_s": STARTUP_S}

    def submit(self, run: Any, spec: Any) -> str:
        script = run.script(self.name)
        if not shutil.which("kubectl"):
            raise LlmctlError(f"kubectl is not installed here: the manifest is written at {script}",
                              hint=f"apply it where kubectl is: kubectl apply -f {shlex.quote(str(script))}")
        run_command(self.submit_argv(script), "kubectl apply")
        return f"{spec.kubernetes.namespace}/{k8s_name(spec.name)}"

    def status(self, run: Any, job_id: str) -> JobStatus:
        ns, name = job_id.split("/", 1)
        spec = run.load_spec()
        kind = workload(spec)
        if kind == "deployment":
            path = ("{.metadata.name}|{.status.readyReplicas}|{.status.replicas}|"
                    '{.status.conditions[?(@.type=="Progressing")].reason}|')
        else:
            path = ("{.metadata.name}|{.status.active}|{.status.succeeded}|{.status.failed}|"
                    '{.status.conditions[?(@.type=="Failed")].reason}')
        out = run_command(["kubectl", "get", kind, name, "-n", ns, "--ignore-not-found", "-o",
                           f"jsonpath={path}"], "kubectl get")
        if not out.strip():
            # Gone: deleted (by `cancel`, or by someone with kubectl) or never applied.
            if run.cancelled_file.exists():
                return JobStatus(job_id, "CANCELLED")
            return JobStatus(job_id, "UNKNOWN", detail={"reason": f"no such {kind} in the cluster"})
        fields = [f.strip() for f in out.strip().split("|")] + [""] * 5
        detail: dict[str, Any] = {}
        restarts = 0
        if kind == "deployment":
            ready, progress = fields[1], fields[3]
            # A server runs until it is deleted: RUNNING while a pod passes its readiness probe.
            state = "RUNNING" if ready and ready != "0" else "PENDING"
            if progress:
                detail["reason"] = progress
        else:
            active, succeeded, failed, reason = fields[1:5]
            # Failed pods are retried (a disrupted pod is not even counted): only the Job's
            # Failed condition is final. DeadlineExceeded is activeDeadlineSeconds, the time limit.
            restarts = int(failed) if failed.isdigit() else 0
            if reason:
                state = "TIMEOUT" if reason == "DeadlineExceeded" else "FAILED"
                detail["reason"] = reason
            elif succeeded.isdigit() and int(succeeded) >= spec.nodes:
                state = "COMPLETED"
            elif active and active != "0":
                state = "RUNNING"
            else:
                state = "PENDING"
        if run.cancelled_file.exists():
            state = "COMPLETING"  # deleted; its pods are stopping (checkpointing)
        return JobStatus(job_id, state, restarts=restarts, detail=detail)

    def log_files(self, run: Any, job_id: str) -> list[Path]:
        # Every pod of the job (`kubectl logs job/NAME` shows one), each line prefixed
        # with its pod; --tail=-1 because a label selector otherwise means the last 10 lines.
        ns, name = job_id.split("/", 1)
        pods = max(5, run.load_spec().nodes)
        out = run_command(["kubectl", "logs", "-n", ns, "-l", f"app.kubernetes.io/instance={name}",
                           "--all-containers", "--prefix", "--tail=-1", f"--max-log-requests={pods}"],
                          "kubectl logs")
        path = run.logs / "k8s.log"
        path.write_text(out, encoding="utf-8")
        return [path]

    def cancel(self, run: Any, job_id: str) -> None:
        # Every object the manifest made, by kind/name (the pods go with their Job or
        # Deployment). Pods get SIGTERM, then terminationGracePeriodSeconds to checkpoint.
        # Foreground deletion keeps the Job until its pods are gone, so `status` says
        # CANCELLED only then; a deleted Job retries nothing.
        ns, name = job_id.split("/", 1)
        spec = run.load_spec()
        run.cancelled_file.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        targets = [f"{o.split('/')[0]}/{name}" for o in objects(spec)]
        run_command(["kubectl", "delete", *targets, "-n", ns, "--ignore-not-found",
                     "--cascade=foreground", "--wait=false"], "kubectl delete")


SCHEDULER = K8sScheduler()
