"""Where each effective setting of a launch came from, recorded as the settings are merged.

Every launch writes `resolved.json` into its run folder and prints a short block:
each setting's value and its source, and a line wherever one source overrode
another ("parallel.micro_batch_size = 4 from plan plans/x.toml (train config
configs/train.toml said 2)"). The sources are named as the user gave them:

    flag --NAME           a command-line option
    flag --set            `--set KEY=VALUE`
    plan PATH             the plan file
    train config PATH     the training config (`PATH (project default)` when --config was
                          not given and the project's configs/train.toml was taken)
    project PATH, user PATH   ./llmctl.toml, ~/.config/llmctl/user.toml
    site NAME             the site-config
    default               llmctl's built-in default

The shape of `resolved.json` (stable; `version` changes if it does):

    {"version": 1, "kind": "train", "run_dir": "...",
     "job":   {"partition": {"value": "debug", "source": "site local"}, ...},
     "train": {"parallel.tp": {"value": 1, "source": "plan plans/p.toml"},
               "parallel.micro_batch_size": {"value": 4, "source": "plan plans/p.toml",
                    "overrode": [{"value": 2, "source": "train config configs/train.toml"}]},
               "parallel.sequence_parallel": {"value": true, "source": "train config ...",
                    "unused": "tensor parallelism is off (tp = 1)"}, ...},
     "tasks": [{...}, ...],     # an array job: one settings table per config (train = tasks[0])
     "program": {"checkpoint": {"value": "/abs/run", "source": "flag --checkpoint"}, ...}}
                                # eval and serve jobs: what the program is given, instead of train
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

DEFAULT = "default"
VERSION = 1


class Provenance:
    """Settings by dotted key: value, source, and the (source, value) pairs they overrode."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def set(self, key: str, value: Any, source: str) -> None:
        """`key` takes `value` from `source`; a different earlier value is kept as overridden."""
        prev = self.entries.get(key)
        entry: dict[str, Any] = {"value": value, "source": source}
        if prev is not None:
            history = list(prev.get("overrode", []))
            if prev["value"] != value:
                history.insert(0, {"value": prev["value"], "source": prev["source"]})
            if history:
                entry["overrode"] = history
        self.entries[key] = entry

    def set_all(self, pairs: Iterable[tuple[str, Any]], source: str) -> None:
        for key, value in pairs:
            self.set(key, value, source)

    def settle(self, final: dict[str, Any]) -> None:
        """Take the validated values (`final`: key -> value); keys no source gave are defaults."""
        for key, value in final.items():
            if key in self.entries:
                self.entries[key]["value"] = value
            else:
                self.entries[key] = {"value": value, "source": DEFAULT}

    def unused(self, key: str, why: str) -> None:
        """A value a source gave that the job does not use (said, never dropped in silence)."""
        if key in self.entries:
            self.entries[key]["unused"] = why

    def to_data(self) -> dict[str, dict[str, Any]]:
        return {k: self.entries[k] for k in sorted(self.entries)}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'parallel': {'tp': 1}} -> {'parallel.tp': 1}; lists and scalars are values."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.update(flatten(v, key + "."))
            else:
                out[key] = v
    return out


def shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _bulk(source: str) -> bool:
    """Sources that give most of the settings (a whole file, the defaults): counted, not listed."""
    return source == DEFAULT or source.startswith("train config ")


def lines(section: str, table: dict[str, dict[str, Any]]) -> list[str]:
    """One line per setting a flag, the plan, the site or a settings file gave, and per value
    that overrode another or goes unused; the settings a whole file or the defaults gave are
    counted by source (resolved.json lists them all)."""
    out = []
    counts: dict[str, int] = {}
    for key, e in table.items():
        if _bulk(e["source"]) and not e.get("overrode") and not e.get("unused"):
            counts[e["source"]] = counts.get(e["source"], 0) + 1
            continue
        line = f"  {section}{key} = {shown(e['value'])}  from {e['source']}"
        if e.get("overrode"):
            said = ", ".join(f"{o['source']} said {shown(o['value'])}" for o in e["overrode"])
            line += f" ({said})"
        if e.get("unused"):
            line += f"; not used: {e['unused']}"
        out.append(line)
    for source, n in counts.items():
        out.append(f"  {n} more {section.rstrip('.') or 'setting'}{'s' if n > 1 else ''} from {source}")
    return out


def job_table(spec: Any, req_sources: dict[str, str], site_data: Optional[dict[str, Any]] = None,
              site_ref: Optional[str] = None,
              given: Optional[dict[str, str]] = None, plan_label: Optional[str] = None
              ) -> dict[str, dict[str, Any]]:
    """The job settings of a resolved JobSpec, with the sources `resolve` recorded (in the spec,
    and the size's in the request's `req_sources`); the site
    fields --set changed, with what the site-config file said."""
    prov = Provenance()
    site_label = f"site {spec.site}"
    values = {"partition": spec.partition, "time": spec.time_limit, "account": spec.account,
              "qos": spec.qos, "reservation": spec.reservation, "mail_user": spec.mail_user,
              "mail_type": ",".join(spec.mail_types) or None, "nodes": spec.nodes,
              "gpus_per_node": spec.gpus_per_node}
    prov.set("site", spec.site, "flag --site" if site_ref else DEFAULT)
    prov.set("launcher", spec.backend, (given or {}).get("launcher", "flag --launcher"))
    for key, value in values.items():
        if value in (None, ""):
            continue
        source = spec.sources.get(key) or req_sources.get(key, DEFAULT)
        if source == "plan" and plan_label:
            source = plan_label
        prov.set(key, value, _site_words(source, site_label))
    for key, value in (spec.overrides or {}).items():
        before = _at(site_data or {}, key)
        if before is not _MISSING:
            prov.set(f"site.{key}", before, site_label)
        prov.set(f"site.{key}", value, "flag --set")
    return prov.to_data()


def _site_words(source: str, site_label: str) -> str:
    """`resolve`'s "site" / "site (partition default)" as "site NAME ..."."""
    if source == "site" or source.startswith("site ("):
        return site_label + source[len("site"):]
    return source


_MISSING = object()


def _at(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def document(kind: str, run_dir: str, job: dict[str, Any], train: Optional[list[dict[str, Any]]] = None,
             program: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The content of resolved.json (see the module docstring)."""
    doc: dict[str, Any] = {"version": VERSION, "kind": kind, "run_dir": run_dir, "job": job}
    if program is not None:
        doc["program"] = program
    if train:
        doc["train"] = train[0]
        if len(train) > 1:
            doc["tasks"] = train
    return doc


def block(doc: dict[str, Any], path: str) -> str:
    """The short block printed at launch (stderr)."""
    out = [f"# resolved settings and their sources (all of them: {path}):"]
    out += lines("", doc["job"])
    if isinstance(doc.get("train"), dict):
        out += lines("", doc["train"])
    if isinstance(doc.get("program"), dict):
        out += lines(f"{doc['kind']}.", doc["program"])
    if len(doc.get("tasks", [])) > 1:
        out.append(f"  (an array of {len(doc['tasks'])} configs: task 0's shown; every task's in tasks[])")
    return "\n".join(out)
