"""The run folder: one class owns its layout, so no other module spells a path.

    RUN/
      job.sh | job.yaml     the rendered script (exactly what is submitted)
      spec.json             the resolved JobSpec
      plan.toml             the plan it was made from (if any)
      config.toml           the resolved config (configs/<i>.toml for an array)
      resolved.json         every effective setting and where it came from (llmctl.jobs.provenance)
      manifest.json         llmctl version, command, sha256 of every file above
      submission.json       backend, job id, submit command (after submission)
      logs/                 scheduler output; SLURM names follow submitit's JobPaths
      checkpoints/          what the program saves (and restarts from)
      metrics.jsonl         the trainer's metrics, one JSON object a line
      loss.png              the trainer's loss curve (at the end of a run)
      endpoint.json         a persistent server's host and port (while it runs)
    (an array task i uses checkpoints/task-i/, metrics-i.jsonl, loss-i.png)
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.fsutil import atomic_write_text


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunDir:
    """A run folder on disk (it need not exist yet)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()

    # --- the layout ------------------------------------------------------------
    def script(self, backend: str) -> Path:
        return self.path / ("job.yaml" if backend == "k8s" else "job.sh")

    @property
    def spec_file(self) -> Path:
        return self.path / "spec.json"

    @property
    def plan_file(self) -> Path:
        return self.path / "plan.toml"

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def configs_dir(self) -> Path:
        return self.path / "configs"

    def array_config(self, index: int | str) -> Path:
        return self.configs_dir / f"{index}.toml"

    @property
    def manifest_file(self) -> Path:
        return self.path / "manifest.json"

    @property
    def submission_file(self) -> Path:
        return self.path / "submission.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def task_checkpoints(self, index: int | str | None = None) -> Path:
        """Checkpoints of the trainer (of array task `index`)."""
        return self.checkpoints if index in (None, "") else self.checkpoints / f"task-{index}"

    def metrics_file(self, index: int | str | None = None) -> Path:
        """The trainer's metrics JSONL (of array task `index`)."""
        return self.path / ("metrics.jsonl" if index in (None, "") else f"metrics-{index}.jsonl")

    def loss_plot(self, index: int | str | None = None) -> Path:
        """The loss-curve PNG the trainer draws at the end (of array task `index`)."""
        return self.path / ("loss.png" if index in (None, "") else f"loss-{index}.png")

    def slurm_log(self, stream: str, array: bool, task: str = "0") -> Path:
        """SLURM --output/--error pattern, matching submitit's `%j_%t_log.out`: the batch
        script's log is task 0's; `task="%t"` gives each srun task its own beside it."""
        job = "%A_%a" if array else "%j"
        return self.logs / f"{job}_{task}_log.{'out' if stream == 'stdout' else 'err'}"

    @property
    def local_log(self) -> Path:
        return self.logs / "job.out"

    @property
    def endpoint_file(self) -> Path:
        """Where a persistent server writes its host:port for discovery."""
        return self.path / "endpoint.json"

    @property
    def exit_code_file(self) -> Path:
        return self.path / "exit_code"

    @property
    def cancelled_file(self) -> Path:
        return self.path / "cancelled"

    # --- reading and writing -----------------------------------------------------
    def exists(self) -> bool:
        return self.spec_file.is_file()

    def require(self) -> "RunDir":
        if not self.path.is_dir():
            raise LlmctlError(f"{self.path}: run folder not found")
        if not self.spec_file.is_file():
            raise LlmctlError(f"{self.path}: not a run folder (no spec.json)",
                              hint="run folders are written by `llmctl train launch` and friends")
        return self

    def load_spec(self) -> Any:
        from llmctl.config.base import load_config
        from llmctl.jobs.spec import JobSpec

        self.require()
        return load_config(self.spec_file, JobSpec)

    def read_json(self, path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise LlmctlError(f"{path}: cannot read: {e}") from e

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def manifest(self) -> dict[str, Any]:
        return self.read_json(self.manifest_file)

    def submission(self) -> dict[str, Any]:
        return self.read_json(self.submission_file)

    def write_manifest(self, files: list[Path], command: str, backend: str) -> None:
        from llmctl import __version__

        hashes = {str(p.relative_to(self.path)): sha256_file(p) for p in sorted(files)}
        self.write_json(self.manifest_file, {
            "llmctl_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command,
            "backend": backend,
            "script": self.script(backend).name,
            "sha256": hashes,
        })

    def edited_files(self) -> list[str]:
        """Files whose content differs from the manifest's hashes (or are gone)."""
        out = []
        for name, digest in sorted(self.manifest().get("sha256", {}).items()):
            p = self.path / name
            if not p.is_file() or sha256_file(p) != digest:
                out.append(name)
        return out
