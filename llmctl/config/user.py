"""Per-user (and per-project) job settings: whose account a job is charged to, and so on.

A shared site-config says what the cluster offers; these say what one person (or
one project) asks of it, without editing the site's file:

    ~/.config/llmctl/user.toml      ($XDG_CONFIG_HOME/llmctl/user.toml when set)
    ./llmctl.toml                   (the project: the folder llmctl runs in)

Both take the same keys as the launch flags. Precedence, once: command-line flag >
project file > user file > site-config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import field_validator

from llmctl.config.base import StrictModel, check_name

MailType = Literal["BEGIN", "END", "FAIL", "REQUEUE", "ALL", "TIME_LIMIT"]
KEYS = ("account", "qos", "reservation", "partition", "time", "mail_user", "mail_type")


class JobSettings(StrictModel):
    """Job settings a user or project chooses (each overrides the site-config's)."""

    account: Optional[str] = None
    """Account to charge (`--account` / `-A`)."""
    qos: Optional[str] = None
    """Quality of service (`--qos`)."""
    reservation: Optional[str] = None
    """Reservation to run in (`--reservation`, SLURM)."""
    partition: Optional[str] = None
    """Partition or queue (one the site-config lists)."""
    time: Optional[str] = None
    """Time limit, e.g. `04:00:00` (at most the partition's `max_time`)."""
    mail_user: Optional[str] = None
    """Address the scheduler mails."""
    mail_type: Optional[list[MailType]] = None
    """Events that send mail (default: the site's, else FAIL)."""

    @field_validator("account", "qos", "reservation", "partition", "time", "mail_user")
    @classmethod
    def _plain(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else check_name(v)


def user_file() -> Path:
    """$XDG_CONFIG_HOME/llmctl/user.toml, else ~/.config/llmctl/user.toml."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "llmctl" / "user.toml"


def project_file() -> Path:
    return Path.cwd() / "llmctl.toml"


def _load(path: Path) -> Optional[JobSettings]:
    from llmctl.config.base import load_config

    return load_config(path, JobSettings) if path.is_file() else None


def merge(flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Flag > project > user: (value per key, where it came from); keys nobody set are absent
    (the site-config fills them)."""
    from llmctl.config.base import validate_data

    given = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items() if v not in (None, [], ())}
    layers = [("flag", validate_data(given, JobSettings, "command line"))]
    for label, path in (("project", project_file()), ("user", user_file())):
        cfg = _load(path)
        if cfg is not None:
            layers.append((f"{label} {path}", cfg))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        for label, cfg in layers:
            value = getattr(cfg, key)
            if value not in (None, []):
                values[key], sources[key] = value, label
                break
    return values, sources
