"""`llmctl init scaffold`: write a new project folder.

The whole project is built in a hidden temporary folder next to the target and
moved into place at the end, so a failure never leaves a half-written project.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llmctl import __version__
from llmctl.errors import LlmctlError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# The example hardware profile the seed README's plan example uses (8×A100-80GB SXM, 8×HDR200
# InfiniBand per node: 200 GB/s). Built from the accelerator table, as `hw probe --site` builds a
# site's node, so the scaffolded profile, the probe and `plan compute --site slurm-a100-ib` give
# one machine the same numbers (docs/hardware.md, "Bandwidths").
def a100x8_profile() -> dict[str, Any]:
    from llmctl.hw.accelerators import lookup

    spec = lookup("NVIDIA A100-SXM4-80GB")
    return {
        "gpu": {"count": 8, "devices": [{"id": i, "name": "NVIDIA A100-SXM4-80GB", "memory_gb": spec.memory_gb}
                                        for i in range(8)]},
        "interconnect": {"intra_node": "NVLink", "inter_node": "InfiniBand"},
        "limits": {"estimated_flops": spec.training_tflops * 1e12 * 8, "memory_bw_gbps": spec.memory_bw_gbps * 8,
                   "intra_node_bw_gbps": spec.nvlink_bw_gbps, "inter_node_bw_gbps": 200.0, "source": "datasheet"},
        "accelerator": spec.to_profile(),
        "notes": ["example profile from datasheet numbers; run `llmctl hw probe` on a real node",
                  "bandwidths are link rates per direction (NVLink per GPU, InfiniBand per node); the planner "
                  "turns them into collective bus bandwidths (docs/hardware.md)"],
    }


A100X8_PROFILE = a100x8_profile()


def check_project_name(name: str) -> str:
    """Accept only plain folder names: no path separators, '..', spaces or shell characters."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise LlmctlError(
            f"unsafe project name {name!r}",
            hint="use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit "
                 "(no path separators, '..', spaces or shell characters)",
        )
    return name


def project_files(template: str, size: str, name: str, site_path: Path | None,
                  site: Any = None) -> tuple[dict[str, str], Any]:
    """(relative path -> file content, validated ModelConfig) for a new project."""
    from llmctl.config.base import validate_data
    from llmctl.config.model import ModelConfig
    from llmctl.plan.params import count_parameters, human_count
    from llmctl.presets import TRAINING, model_fields, source
    from llmctl.render import render

    model = validate_data(model_fields(template, size), ModelConfig, f"preset {template}-{size}")
    model_file_name = f"{template}-{size}.json"
    t = TRAINING[size]
    seq_len = t.get("seq_len", model.max_seq_len)
    ctx = dict(
        name=name, version=__version__, model_name=model.name,
        model_file=f"configs/models/{model_file_name}", model_file_name=model_file_name,
        parameters=human_count(count_parameters(model).total), source=source(template, size),
        t=t, seq_len=seq_len, vocab_size=model.vocab_size,
        site=site_path.stem if site_path else None,
        next_steps=next_steps(f"configs/models/{model_file_name}", size, count_parameters(model).total, site,
                              site_path.stem if site_path else None),
    )
    import tomli_w

    files = {
        "README.md": render("scaffold/README.md.j2", **ctx),
        f"configs/models/{model_file_name}": json.dumps(model.to_data(), indent=2) + "\n",
        "configs/hw/a100x8.toml": "# Example hardware profile (8x A100-80GB SXM, datasheet numbers).\n"
                                  + tomli_w.dumps(A100X8_PROFILE),
        "configs/train.toml": render("scaffold/train.toml.j2", **ctx),
        "configs/data/example.toml": render("scaffold/data.toml.j2", **ctx),
        "configs/eval/lm-eval-harness.toml": render("scaffold/eval-suite.toml.j2", **ctx),
        "configs/serve.toml": render("scaffold/serve.toml.j2", **ctx),
        "plans/.gitkeep": "",
        "checkpoints/.gitkeep": "",
        "site-configs/.gitkeep": "",
        ".gitignore": "checkpoints/*\n!checkpoints/.gitkeep\ndata/\nruns/\n",
    }
    if site_path is not None:
        files[f"site-configs/{site_path.name}"] = site_path.read_text(encoding="utf-8")
    return files, model


# Sizes that train on a CPU or one small GPU: the machine llmctl runs on can be the one probed.
CPU_SIZES = ("tiny", "125m", "1b", "0.5b")


def next_steps(model_file: str, size: str, parameters: int, site: Any = None,
               site_name: str | None = None) -> list[str]:
    """The commands that take a new project to a running job, in order. With a site, the
    hardware comes from its node shape (`hw probe --site`), which works on a login node; a
    small model may probe the machine llmctl runs on; a large one without a site names one."""
    if site is not None or size not in CPU_SIZES:
        name = site_name or "SITE"
        nodes = _nodes_for(parameters, site)
        hw, plan = f"configs/hw/{name}.toml", f"plans/{name}.toml"
        steps = [] if site is not None else ["llmctl site list  # pick your cluster's site-config as SITE"]
        steps.append(f"llmctl hw probe --site {name} --nodes {nodes} --emit {hw}")
        launcher = site.scheduler if site is not None else "slurm"
        launch_where = f"--launcher {launcher} --site {name}"
    else:
        hw, plan = "configs/hw/local.toml", "plans/local.toml"
        steps = [f"llmctl hw probe --emit {hw}"]
        launch_where = "--launcher local"
    return steps + [
        f"llmctl plan compute --model {model_file} --hardware {hw} --train configs/train.toml --out {plan}",
        "llmctl data prepare --config configs/data/example.toml",
        f"llmctl train launch --plan {plan} --config configs/train.toml --data configs/data/example.toml "
        f"{launch_where}",
    ]


def _nodes_for(parameters: int, site: Any) -> int:
    """Nodes whose GPU memory holds the model's training state: 16 bytes a parameter (bf16
    weights and gradients, fp32 master weights and two Adam moments; ZeRO shards them), at
    80% of the memory (activations and buffers take the rest); at least one."""
    import math

    gpus, mem = 8, 80.0  # without a site: an 8x80 GB node
    if site is not None:
        part = site.partitions[site.default_partition]
        if part.gpus_per_node:
            from llmctl.hw.accelerators import lookup

            spec = lookup(part.gpu_model) if getattr(part, "gpu_model", None) else None
            gpus, mem = part.gpus_per_node, (spec.memory_gb if spec else mem)
    return max(1, math.ceil(parameters * 16 / (0.8 * gpus * mem * 1e9)))


def scaffold_project(*, template: str, size: str, name: str, output_dir: str | os.PathLike = ".",
                     site: str | None = None, force: bool = False) -> dict[str, Any]:
    """Create the project folder `output_dir/name`; returns what was written."""
    from llmctl.presets import MODELS

    check_project_name(name)
    if (template, size) not in MODELS:
        sizes = [s for t, s in MODELS if t == template]
        others = [t for t, s in MODELS if s == size]
        raise LlmctlError(f"no {template} preset of size {size!r}; {template} sizes: {', '.join(sizes) or 'none'}",
                          hint=f"{size} is a size of {', '.join(others)}" if others else None)
    site_path = site_cfg = None
    if site is not None:
        from llmctl.sites import load_site

        site_cfg, site_path = load_site(site)  # validates it, so the project never carries a broken one

    out = Path(output_dir)
    target = out / name
    if target.exists() and not target.is_dir():
        raise LlmctlError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise LlmctlError(f"{target} exists and is not empty",
                          hint="choose another --name or --output-dir, or pass --force to overwrite llmctl's files")
    files, model = project_files(template, size, name, site_path, site_cfg)

    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".scaffold", dir=out))
    except OSError as e:
        raise LlmctlError(f"cannot create {target}: {e.strerror or e}") from e
    try:
        for rel, content in files.items():
            p = staging / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content, encoding="utf-8")
        if not target.exists():
            os.rename(staging, target)
        else:
            if not any(target.iterdir()):
                target.rmdir()
                os.rename(staging, target)
            else:  # --force: replace llmctl's files one by one, keep the user's others
                for rel in files:
                    dst = target / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / rel, dst)
    except OSError as e:
        raise LlmctlError(f"cannot write {target}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    from llmctl.plan.params import count_parameters, human_count

    n = count_parameters(model).total
    return {
        "project_dir": str(target),
        "files": sorted(files),
        "model": {"name": model.name, "file": f"configs/models/{template}-{size}.json",
                  "parameters": n, "parameters_human": human_count(n)},
        "site": site_path.stem if site_path else None,
        "next_steps": next_steps(f"configs/models/{template}-{size}.json", size, n, site_cfg,
                                 site_path.stem if site_path else None),
    }



def project_train_config(folder: str | os.PathLike | None = None) -> Path | None:
    """The training config of the scaffolded project in `folder` (default: the current one,
    then as the relative path configs/train.toml), or None when it is not one. A project is
    what `init scaffold` writes: configs/train.toml beside configs/models/. Its paths are
    relative to the project folder, so only the folder llmctl runs in counts, not its parents."""
    root = Path(folder) if folder is not None else Path.cwd()
    if not ((root / "configs" / "train.toml").is_file() and (root / "configs" / "models").is_dir()):
        return None
    return Path("configs/train.toml") if folder is None else root / "configs" / "train.toml"
