"""Finding site-configs.

Look-up order, first match wins (stated once, here):
  1. `--site PATH` — a path to a .toml file;
  2. the project's `site-configs/` (relative to the current folder);
  3. each folder in `$LLMCTL_SITE_CONFIGS` (separated by ':');
  4. `/etc/llmctl/site-configs`;
  5. the site-configs shipped with llmctl (`local` is the embedded default).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from llmctl.errors import ConfigError, LlmctlError
from llmctl.resources import data_dir

DEFAULT_SITE = "local"
SYSTEM_DIR = Path("/etc/llmctl/site-configs")


def search_path() -> list[tuple[str, Path]]:
    """(origin, folder) pairs in look-up order, without duplicates."""
    dirs: list[tuple[str, Path]] = [("project", Path.cwd() / "site-configs")]
    for d in os.environ.get("LLMCTL_SITE_CONFIGS", "").split(":"):
        if d:
            dirs.append(("env", Path(d)))
    dirs.append(("system", SYSTEM_DIR))
    dirs.append(("shipped", data_dir("site-configs")))
    seen: set[Path] = set()
    out = []
    for origin, d in dirs:
        key = d.resolve() if d.exists() else d
        if key in seen:
            continue
        seen.add(key)
        out.append((origin, d))
    return out


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(".toml") or ref.startswith(".")


def find_site(ref: str | None = None) -> Path:
    """Resolve a site NAME or PATH to its file (None means the default site)."""
    from llmctl.config.base import file_problem

    ref = ref or DEFAULT_SITE
    if _is_path(ref):
        problem = file_problem(ref)
        if problem:
            raise ConfigError(ref, [f"site-config {problem}" if problem == "file not found" else problem])
        return Path(ref)
    for _, d in search_path():
        p = d / f"{ref}.toml"
        if os.path.lexists(p):  # there, but maybe a directory, a symlink loop or unreadable: say so
            problem = file_problem(p)
            if problem:
                raise ConfigError(str(p), [problem])
            return p
    known = sorted({e["name"] for e in list_sites()})
    raise LlmctlError(
        f"no site-config named {ref!r}",
        hint=f"known sites: {', '.join(known) or '(none)'}; or pass a path to a .toml file",
    )


def load_site(ref: str | None = None, overrides: dict[str, Any] | None = None) -> tuple[Any, Path]:
    """Load and validate a site-config; returns (SiteConfig, path). `overrides` (key path ->
    value, from `--set`) are set in the file's data first, so a bad one is refused as a wrong
    file would be (file, key path, problem)."""
    from llmctl.config.base import read_data, validate_data
    from llmctl.config.site import SiteConfig

    path = find_site(ref)
    data = read_data(path)
    name = str(path)
    if overrides:
        from llmctl.config.overrides import apply

        data = apply(data, list(overrides.items()))
        name = f"{path} (with --set {', '.join(overrides)})"
    return validate_data(data, SiteConfig, name), path


def list_sites() -> list[dict[str, Any]]:
    """Every site-config on the search path, marking shadowed ones."""
    from llmctl.config.base import bad_char, describe_char, read_data

    entries = []
    seen: set[str] = set()
    for origin, d in search_path():
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.toml")):
            name = p.stem
            entry: dict[str, Any] = {"name": name, "origin": origin, "path": str(p),
                                     "scheduler": "?", "description": "", "shadowed": name in seen}
            try:
                data = read_data(p)
                entry["scheduler"] = str(data.get("scheduler", "?"))
                entry["description"] = str(data.get("description", ""))
                for key in ("scheduler", "description"):  # printed raw in a table: no escapes
                    found = bad_char(entry[key], allow="")
                    if found:
                        entry[key] = f"(invalid: {key} contains {describe_char(found[1])})"
            except ConfigError as e:
                entry["description"] = f"(unreadable: {e.problems[0]})"
            if entry["shadowed"]:
                entry["description"] = "(shadowed) " + entry["description"]
            seen.add(name)
            entries.append(entry)
    return entries


def check_site(ref: str) -> dict[str, Any]:
    """Validate a site-config beyond its schema; raises ConfigError on problems.

    Returns a report with warnings for things that may be fine but deserve a look
    (for example a scheduler whose commands are not on this machine).
    """
    cfg, path = load_site(ref)
    problems: list[str] = []
    warnings: list[str] = []
    if cfg.name != path.stem:
        problems.append(f"name: {cfg.name!r} differs from the file name {path.stem!r} "
                        "(`--site NAME` finds files by name)")
    tools = {"slurm": "sbatch", "pbs": "qsub", "mpi": "mpirun", "k8s": "kubectl"}
    tool = tools.get(cfg.scheduler)
    if tool and not shutil.which(tool):
        warnings.append(f"`{tool}` is not on this machine's PATH (fine if you only render scripts here)")
    if cfg.container.runtime in ("apptainer", "singularity") and not shutil.which(cfg.container.runtime):
        warnings.append(f"`{cfg.container.runtime}` is not on this machine's PATH")
    if cfg.container.runtime == "bubblewrap" and not shutil.which("bwrap"):
        warnings.append("`bwrap` is not on this machine's PATH (the compute nodes need it: apt-get install bubblewrap)")
    if cfg.scheduler in ("slurm", "pbs") and any(p.gpus_per_node for p in cfg.partitions.values()):
        for name, p in cfg.partitions.items():
            if p.gpus_per_node and not p.gpu_model:
                warnings.append(f"partitions.{name}.gpu_model is not set: the planner cannot look up peak FLOP/s")
    if cfg.scheduler in ("slurm", "pbs", "k8s") and not cfg.job_python():
        warnings.append("python is not set: jobs are refused until it names the compute nodes' "
                        "interpreter (or a [container] gives one)")
    if cfg.network.inter_node not in ("none", "") and cfg.network.inter_node_bw_gbps is None:
        warnings.append("network.inter_node_bw_gbps is not set: the planner will take the probed IB rate")
    if problems:
        raise ConfigError(str(path), problems)
    gpus = sum(p.nodes * p.gpus_per_node for p in cfg.partitions.values())
    summary = (f"{cfg.scheduler}, {len(cfg.partitions)} partition(s), "
               f"{sum(p.nodes for p in cfg.partitions.values())} node(s), {gpus} GPU(s)")
    return {"name": cfg.name, "path": str(path), "ok": True, "summary": summary, "warnings": warnings}
