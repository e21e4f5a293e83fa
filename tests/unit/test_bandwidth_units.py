"""Every bandwidth key of a hardware profile and a site-config says its unit and what it
is per, in its own description (what `llmctl schema` and docs/config-reference.md show),
the way docs/hardware.md's "Bandwidths" table does: GB/s (gigabytes, one direction), per
node or per GPU; the one key in gigabits says so (issue 19: `inter_node_bw_gbps` holds GB/s)."""

from __future__ import annotations

import re
from pathlib import Path

from llmctl.config.base import _unwrap
from llmctl.config.hardware import HardwareProfile
from llmctl.config.site import SiteConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "hardware.md"
IN_BITS = {"network.infiniband[].rate_gbps"}


def gbps_fields(model, prefix=""):
    """key path -> description of every `*_gbps` field under `model`."""
    for name, field in model.model_fields.items():
        sub, container = _unwrap(field.annotation)
        key = f"{prefix}{field.alias or name}"
        if sub is not None:
            yield from gbps_fields(sub, key + ("[]." if container == "list" else "."))
        elif name.endswith("_gbps"):
            yield key, " ".join((field.description or "").split())


def table_rows() -> dict[str, str]:
    """docs/hardware.md's Bandwidths table: `limits.KEY` -> what it is per (GPU or node)."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Bandwidths"):]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(limits\.\w+)` \| (\w+) \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_gbps_key_says_its_unit():
    fields = dict(gbps_fields(HardwareProfile)) | {f"site {k}": v for k, v in gbps_fields(SiteConfig)}
    assert "limits.inter_node_bw_gbps" in fields and "site network.inter_node_bw_gbps" in fields
    for key, desc in fields.items():
        if key in IN_BITS:
            assert "Gb/s (gigabits" in desc, key
        else:
            assert "GB/s (gigabytes per second, not gigabits)" in desc, f"{key}: {desc!r}"
    assert "rate_gbps" in DOC.read_text(encoding="utf-8")  # the exception is documented


def test_limits_are_per_what_docs_hardware_md_says():
    fields = dict(gbps_fields(HardwareProfile))
    rows = table_rows()
    assert set(rows) == {k for k in fields if k.startswith("limits.")}
    for key, per in rows.items():
        assert f"per {per} in GB/s" in fields[key], f"{key}: docs/hardware.md says per {per}"
        if key != "limits.memory_bw_gbps":  # links carry one direction; memory has none
            assert "one direction" in fields[key], key
    site = dict(gbps_fields(SiteConfig))["network.inter_node_bw_gbps"]
    assert "per node in GB/s" in site and "one direction" in site
