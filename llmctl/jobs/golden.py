"""Golden job files: every shipped site-config x backend x job kind, rendered.

    python -m llmctl.jobs.golden write   # regenerate jobs/
    python -m llmctl.jobs.golden check   # exit 1 with a diff if jobs/ is stale

`jobs/<site>/<backend>/<kind>.spec.json` is the resolved spec and
`<kind>.sh` (Kubernetes: `.yaml`) its rendered script, so a reviewer sees every
change to generated scripts as a diff. Inputs are fixed (run folder
ROOT/runs/... on the site's shared filesystem, the site's interpreter (`python3`
for the local site), a hand-written plan sized to the site) so that the files do not depend on the machine that writes them.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Iterator

from llmctl.jobs.spec import KINDS

REPO = Path(__file__).resolve().parent.parent.parent
GOLDEN_DIR = REPO / "jobs"
BACKENDS_FOR = {"slurm": ("slurm",), "pbs": ("pbs",), "k8s": ("k8s",), "local": ("local", "mpi"),
                "mpi": ("mpi", "local")}


def _plan(nodes: int, gpn: int) -> Any:
    from llmctl.config.plan import PlanFile

    return PlanFile.model_validate({
        "inputs": {"model": "/project/configs/models/llama-7b.json", "nodes": nodes,
                   "gpus_per_node": gpn, "global_batch": nodes * gpn * 4},
        "parallelism": {"dp": nodes * gpn, "micro_batch": 1, "grad_accum": 4}})


def project_root(site: Any) -> str:
    """Where a project lives on the site's login node: its first mount's source, its shared
    filesystem, else /project (a site that shares every path)."""
    mounts = site.job_mounts()
    if mounts:
        return mounts[0][0] if site.container.runtime != "none" else (site.filesystems.shared or mounts[0][0])
    return site.filesystems.shared or "/project"


def cases() -> Iterator[tuple[str, str, str, Any]]:
    """(site, backend, kind, JobSpec) for every shipped site-config."""
    from llmctl.config.base import load_config
    from llmctl.config.site import SiteConfig
    from llmctl.jobs.launch import eval_program, serve_program, train_program
    from llmctl.jobs.resolve import JobRequest, resolve
    from llmctl.resources import data_dir

    for path in sorted(data_dir("site-configs").glob("*.toml")):
        site = load_config(path, SiteConfig)
        part = site.partition()
        nodes = min(2, part.max_nodes or part.nodes)
        gpn = part.gpus_per_node or min(2, part.cpus_per_node)
        root = project_root(site)
        # The local site's interpreter is the machine's own: pin it so the files do not vary.
        python = "python3" if site.scheduler in ("local", "mpi") else None
        for backend in BACKENDS_FOR[site.scheduler]:
            for kind in KINDS:
                rd = f"{root}/runs/{site.name}-{backend}-{kind}"
                program = {
                    "train": lambda: train_program(rd),
                    "eval": lambda: eval_program(rd, f"{root}/runs/train/checkpoints/step-1000",
                                                 f"{root}/configs/eval/suite.toml"),
                    "serve-batch": lambda: serve_program("serve-batch", rd, f"{root}/artifacts/model",
                                                         f"{root}/data/requests.jsonl"),
                    "serve-persistent": lambda: serve_program("serve-persistent", rd,
                                                              f"{root}/artifacts/model"),
                }[kind]()
                req = JobRequest(kind=kind, backend=backend, run_dir=rd, program=program,
                                 name=f"{kind}-demo", python=python,
                                 command="python -m llmctl.jobs.golden write")
                yield site.name, backend, kind, resolve(site, req, _plan(nodes, gpn))
            if backend != "k8s" and nodes * gpn > 1 and site.container.runtime != "pyxis":
                # A server on MPI ranks over the nodes (mpirun whatever the site's launcher;
                # refused under pyxis, whose containers start only through srun).
                rd = f"{root}/runs/{site.name}-{backend}-serve-mpi"
                req = JobRequest(kind="serve-persistent", backend=backend, run_dir=rd, name="serve-mpi-demo",
                                 program=serve_program("serve-persistent", rd, f"{root}/artifacts/model",
                                                       mpi_mode="tp"),
                                 nodes=nodes, gpus_per_node=gpn, python=python,
                                 command="python -m llmctl.jobs.golden write")
                yield site.name, backend, "serve-persistent-mpi", resolve(site, req)


def render_all() -> dict[Path, str]:
    """Relative path under jobs/ -> expected text."""
    from llmctl.schedulers import get_scheduler

    out: dict[Path, str] = {}
    for site, backend, kind, spec in cases():
        dry = get_scheduler(backend).render(spec)
        base = Path(site) / backend
        out[base / f"{kind}.spec.json"] = spec.model_dump_json(indent=2) + "\n"
        out[base / (f"{kind}.yaml" if backend == "k8s" else f"{kind}.sh")] = dry.script
    return out


def diff(root: Path = GOLDEN_DIR) -> str:
    """Unified diff between jobs/ and a fresh rendering ('' when current)."""
    expected = render_all()
    chunks = []
    for rel, text in sorted(expected.items()):
        p = root / rel
        old = p.read_text(encoding="utf-8") if p.is_file() else ""
        if old != text:
            chunks += difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                           f"a/jobs/{rel}", f"b/jobs/{rel}")
    known = {root / rel for rel in expected}
    for p in sorted(root.glob("*/*/*")):
        if p.is_file() and p not in known:
            chunks.append(f"stale file (no longer rendered): {p.relative_to(root.parent)}\n")
    return "".join(chunks)


def write(root: Path = GOLDEN_DIR) -> int:
    from llmctl.fsutil import atomic_write_text

    expected = render_all()
    for rel, text in expected.items():
        atomic_write_text(root / rel, text)
    known = {root / rel for rel in expected}
    for p in root.glob("*/*/*"):
        if p.is_file() and p not in known:
            p.unlink()
    return len(expected)


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"]:
        print(f"wrote {write()} files under {GOLDEN_DIR}")
        return 0
    if argv[:1] == ["check"]:
        d = diff()
        sys.stdout.write(d or "jobs/ is current\n")
        return 1 if d else 0
    print("usage: python -m llmctl.jobs.golden write|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
