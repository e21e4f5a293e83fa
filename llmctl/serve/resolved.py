"""The effective settings of `llmctl serve start` and where each came from.

The server's side of llmctl/jobs/provenance.py: each setting of the serve config is
taken from a flag given on the command line, else the serve config file (--config),
else the default, and the server prints every one with its source when it starts
(and a flag that overrode the file says what the file said). In a job ($LLMCTL_RUN_DIR
set) the same goes to RUN/serve-resolved.json:

    {"version": 1, "kind": "serve start", "config": "/abs/serve.toml" or null,
     "settings": {"max_batch_tokens": {"value": 2048, "source": "flag --max-batch-tokens",
                      "overrode": [{"value": 1024, "source": "serve config /abs/serve.toml"}]},
                  "kv_block_size": {"value": 8, "source": "serve config /abs/serve.toml"},
                  "port": {"value": 8080, "source": "default"}, ...}}

Login-node safe: no torch here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from llmctl.jobs.provenance import DEFAULT, Provenance, shown

FILE = "serve-resolved.json"
VERSION = 1


def flag_name(key: str, value: Any) -> str:
    """The command-line option that sets `key` (a boolean's --no- form when it is false)."""
    name = key.replace("_", "-")
    return f"--no-{name}" if value is False else f"--{name}"


def resolve(config_path: Optional[str], flags: dict[str, tuple[Any, bool]]):
    """(ServeConfig, settings table) from the serve config file and the flags
    (`flags`: key -> (value, given on the command line)). A flag given wins; a flag left at
    its default fills only what the file leaves unset (the defaults are the same)."""
    from llmctl.config.base import load_config
    from llmctl.config.serve import ServeConfig

    prov = Provenance()
    cfg = load_config(config_path, ServeConfig) if config_path else ServeConfig()
    label = f"serve config {Path(config_path).absolute()}" if config_path else None
    data = cfg.model_dump()
    for key in cfg.model_fields_set:  # the keys the file itself set
        prov.set(key, data[key], label)
    for key, (value, given) in flags.items():
        if value is None:
            continue
        if given:
            data[key] = value
            prov.set(key, value, f"flag {flag_name(key, value)}")
        elif key not in cfg.model_fields_set:
            data[key] = value  # the option's default, the same as the config's: source "default"
    final = ServeConfig(**data)
    prov.settle(final.model_dump())
    return final, prov.to_data()


def document(config_path: Optional[str], table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"version": VERSION, "kind": "serve start",
            "config": str(Path(config_path).absolute()) if config_path else None, "settings": table}


def lines(table: dict[str, dict[str, Any]]) -> list[str]:
    """One line per setting: value, source, and what an overridden source said."""
    out = []
    for key, e in table.items():
        line = f"llmctl serve:   {key} = {shown(e['value'])}  from {e['source']}"
        if e.get("overrode"):
            line += " (" + ", ".join(f"{o['source']} said {shown(o['value'])}" for o in e["overrode"]) + ")"
        out.append(line)
    return out


def announce(doc: Optional[dict[str, Any]], run_dir: Optional[str]) -> None:
    """Print the settings of `doc` (from `document`) and their sources; in a job, write
    `doc` to RUN/serve-resolved.json first."""
    if doc is None:
        return
    from llmctl.fsutil import atomic_write_text

    where = ""
    if run_dir:
        path = Path(run_dir) / FILE
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
        where = f"; also in {path}"
    table = doc["settings"]
    given = sum(e["source"] != DEFAULT for e in table.values())
    print(f"llmctl serve: settings and their sources ({given} not default{where}):", flush=True)
    print("\n".join(lines(table)), flush=True)
