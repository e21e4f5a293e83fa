"""Pre-flight: what would make a submitted job fail in the queue, checked before it is queued.

`submit_run` calls `check` before the scheduler sees the script: every input the job
reads is there and readable (the data config and its prepared data, the model config
or pretrained folder, the checkpoint, the artifact, the requests), the partition is
still one the site lists, and on SLURM `sbatch --test-only` accepts the exact script.
All problems are reported together, one line each; nothing is queued (exit 2).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError


def _readable(label: str, path: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        return [f"{label} {path}: not found"]
    if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
        return [f"{label} {path}: not readable"]
    return []


def _prepared(data_config: str) -> list[str]:
    """The data config's output.dir holds prepared data (meta.json), found as the job finds it:
    relative to the data config's folder or one above it."""
    from llmctl.config.base import load_config
    from llmctl.config.data import DataConfig

    try:
        cfg = load_config(data_config, DataConfig)
    except LlmctlError as e:
        return [f"data.config_file {data_config}: {e.message.splitlines()[0]}"]
    out = Path(cfg.output.dir).expanduser()
    base = Path(data_config).parent
    candidates = [out] if out.is_absolute() else [d / out for d in (base, *base.parents)]
    for d in candidates:
        meta = d / "meta.json"
        if meta.is_file():
            return [] if os.access(meta, os.R_OK) else [f"prepared data {meta}: not readable"]
    return [f"data.config_file {data_config}: output.dir {cfg.output.dir!r} holds no prepared data (no meta.json); "
            f"run `llmctl data prepare --config {data_config}`"]


def problems(run: Any, spec: Any) -> list[str]:
    """Every reason the job would fail in the queue that can be seen from here."""
    out: list[str] = []
    for label, path in spec.inputs.items():
        found = _readable(label, path)
        out += found
        if not found and label == "data.config_file":
            out += _prepared(path)
    if spec.kind == "train":
        out += _tracking(run, spec)
    if spec.container.runtime == "bubblewrap":
        out += _bwrap_image(spec.container.image, spec.python)
    if spec.backend in ("slurm", "pbs") and spec.partition:
        from llmctl.sites import load_site

        try:
            ref = spec.site_file if spec.site_file and Path(spec.site_file).is_file() else spec.site
            site, _ = load_site(ref, spec.overrides)  # with the --set fields it was rendered with
        except LlmctlError:
            site = None  # the site file is not findable from here: the scheduler checks the partition
        if site is not None and spec.partition not in site.partitions:
            out.append(f"partition {spec.partition!r} is not in site {spec.site!r} "
                       f"(it has {', '.join(site.partitions)})")
    if spec.backend == "slurm" and not out and shutil.which("sbatch"):
        out += _sbatch_test_only(run.script("slurm"))
    return out


def _tracking(run: Any, spec: Any) -> list[str]:
    """The trackers the training config names can be imported by the job's Python (checked
    here when that Python is this one or is on this host; a container's image is the
    job's to check, at the start of the run)."""
    import subprocess
    import sys

    from llmctl.config.base import tomllib
    from llmctl.track.base import BACKENDS, missing

    wanted: list[str] = []
    for f in [run.config_file, *sorted(run.configs_dir.glob("*.toml"))]:
        try:
            data = tomllib.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
        except (OSError, ValueError):
            continue  # the run reports a broken config itself
        wanted += [b for b in (data.get("tracking") or {}).get("backends", []) if b in BACKENDS]
    wanted = list(dict.fromkeys(wanted))
    if not wanted or spec.container.runtime != "none":
        return []
    python = Path(spec.python)
    if python.is_file() and os.path.realpath(python) != os.path.realpath(sys.executable):
        code = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
                "if importlib.util.find_spec(m) is None))")
        try:
            r = subprocess.run([str(python), "-c", code, *(BACKENDS[b].packages[0] for b in wanted)], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return []
        gone = set(r.stdout.split()) if r.returncode == 0 else set()
        return [f"tracking.backends: {b!r} needs the {BACKENDS[b].packages[0]} package in {python} "
                f"(pip install {BACKENDS[b].pip}, or pip install 'llmctl[track]')"
                for b in wanted if BACKENDS[b].packages[0] in gone]
    return missing(wanted) if python.is_file() or str(python) == sys.executable else []


def _bwrap_image(image: str, python: str) -> list[str]:
    """A bubblewrap image is a folder on a shared filesystem: it is there, with its python."""
    from llmctl.config.site import BWRAP_IMAGE_DIR

    found = _readable("container.image", image)
    if found or not python.startswith(BWRAP_IMAGE_DIR + "/"):
        return found
    host = os.path.join(image, python[len(BWRAP_IMAGE_DIR) + 1:])
    # lexists: a venv's bin/python is a link into /usr, which is the compute node's, not this one's.
    if not os.path.lexists(host):
        return [f"container.python {python}: {host} is not in the image "
                "(build the image with scripts/bwrap-prefix.sh)"]
    return []


def _sbatch_test_only(script: Path) -> list[str]:
    """`sbatch --test-only` of the exact script: SLURM validates it without queueing it."""
    from llmctl.schedulers.base import try_command
    from llmctl.schedulers.slurm import sbatch_message

    r = try_command(["sbatch", "--test-only", str(script)], timeout=60)
    if r is None:
        return ["sbatch --test-only did not answer in 60 s"]
    if r.returncode != 0:
        return [f"sbatch --test-only refused the script: {sbatch_message(r.stderr or r.stdout)}"]
    return []


def check(run: Any, spec: Any) -> None:
    """Raise one LlmctlError listing every problem (one line each); return if there is none."""
    found = problems(run, spec)
    if found:
        raise LlmctlError(f"{run.path}: not submitted, {len(found)} problem(s):\n  " + "\n  ".join(found),
                          hint="fix them, then `llmctl job submit RUN` (nothing was queued)")
