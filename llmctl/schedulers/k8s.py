"""Kubernetes: an indexed batch/v1 Job, one pod per node, with a headless Service.

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


def k8s_name(name: str) -> str:
    """A DNS-1123 label (lowercase letters, digits, '-'; at most 52 so pod names fit 63)."""
    safe = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    safe = safe[:52].rstrip("-")
    return safe if safe[:1].isalpha() else ("job-" + safe).rstrip("-")[:52]


class K8sScheduler(Scheduler):
    name = "k8s"
    suffix = ".yaml.j2"

    def submit_argv(self, script: Path) -> list[str]:
        return ["kubectl", "apply", "-f", str(script)]

    def context(self, spec: Any) -> dict[str, Any]:
        q = shlex.quote
        prog = " ".join(q(a) for a in spec.program)
        if spec.launcher == "torchrun":
            command = (f"exec {q(spec.python)} -m torch.distributed.run --nnodes={spec.nodes} "
                       f"--nproc-per-node={spec.ranks_per_node} "
                       '--node-rank="$JOB_COMPLETION_INDEX" --master-addr="$MASTER_ADDR" '
                       f'--master-port="$MASTER_PORT" {prog}')
        else:
            command = f"exec {q(spec.python)} {prog}"
        return {"kname": k8s_name(spec.name), "command": command}

    def _ref(self, run: Any) -> tuple[str, str]:
        spec = run.load_spec()
        return spec.kubernetes.namespace, k8s_name(spec.name)

    def submit(self, run: Any, spec: Any) -> str:
        script = run.script(self.name)
        if not shutil.which("kubectl"):
            raise LlmctlError(f"kubectl is not installed here: the manifest is written at {script}",
                              hint=f"apply it where kubectl is: kubectl apply -f {shlex.quote(str(script))}")
        run_command(self.submit_argv(script), "kubectl apply")
        return f"{spec.kubernetes.namespace}/{k8s_name(spec.name)}"

    def status(self, run: Any, job_id: str) -> JobStatus:
        ns, name = job_id.split("/", 1)
        out = run_command(["kubectl", "get", "job", name, "-n", ns, "--ignore-not-found", "-o",
                           "jsonpath={.metadata.name} {.status.active} {.status.succeeded} {.status.failed}"],
                          "kubectl get")
        if not out.strip():
            # Gone: deleted (by `cancel`, or by someone with kubectl) or never applied.
            if run.cancelled_file.exists():
                return JobStatus(job_id, "CANCELLED")
            return JobStatus(job_id, "UNKNOWN", detail={"reason": "no such Job in the cluster"})
        fields = [f.strip() for f in out.rstrip("\n").split(" ")] + ["", "", "", ""]
        _, active, succeeded, failed = fields[:4]
        spec = run.load_spec()
        if failed and failed != "0":
            state = "FAILED"
        elif succeeded and int(succeeded) >= spec.nodes:
            state = "COMPLETED"
        elif active and active != "0":
            state = "RUNNING"
        else:
            state = "PENDING"
        if run.cancelled_file.exists():
            state = "COMPLETING"  # deleted; its pods are stopping (checkpointing)
        return JobStatus(job_id, state)

    def log_files(self, run: Any, job_id: str) -> list[Path]:
        ns, name = job_id.split("/", 1)
        out = run_command(["kubectl", "logs", f"job/{name}", "-n", ns, "--all-containers"], "kubectl logs")
        path = run.logs / "k8s.log"
        path.write_text(out, encoding="utf-8")
        return [path]

    def cancel(self, run: Any, job_id: str) -> None:
        # Pods get SIGTERM, then terminationGracePeriodSeconds to checkpoint. Foreground
        # deletion keeps the Job until its pods are gone, so `status` says CANCELLED only
        # then. The Job never restarts (backoffLimit 0), so nothing can requeue it.
        ns, name = job_id.split("/", 1)
        run.cancelled_file.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        run_command(["kubectl", "delete", "job", name, "-n", ns, "--ignore-not-found",
                     "--cascade=foreground", "--wait=false"], "kubectl delete")
        if run.load_spec().nodes > 1:
            run_command(["kubectl", "delete", "service", name, "-n", ns, "--ignore-not-found",
                         "--wait=false"], "kubectl delete")


SCHEDULER = K8sScheduler()
