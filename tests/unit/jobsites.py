"""Shipped site-configs made to see a test's temporary folder.

A shipped site refuses a run folder outside its mounts or shared filesystems (as
it should: /tmp on a login node is not on the compute nodes). Tests that render
for a shipped site write a copy into `<tmp>/site-configs/NAME.toml`, which a
command run with `cwd=<tmp>` finds first, in which <tmp> is one more shared
filesystem (a container site mounts it at the same path).
"""

from __future__ import annotations

import tomllib
from pathlib import Path


def see_tmp(tmp_path: Path, *names: str) -> Path:
    import tomli_w

    from llmctl.resources import data_dir

    folder = tmp_path / "site-configs"
    folder.mkdir(exist_ok=True)
    for name in names:
        data = tomllib.loads((data_dir("site-configs") / f"{name}.toml").read_text())
        container = data.get("container", {})
        if container.get("runtime", "none") == "kubernetes":
            container["mounts"] = [f"{tmp_path}:{tmp_path}"]
        elif container.get("runtime", "none") != "none":
            container["mounts"] = [*container.get("mounts", []), f"{tmp_path}:{tmp_path}"]
        else:
            fs = data.setdefault("filesystems", {})
            fs["extra"] = [*fs.get("extra", []), str(tmp_path)]
        (folder / f"{name}.toml").write_text(tomli_w.dumps(data))
    return folder
