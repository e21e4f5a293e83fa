"""The test folders have no __init__.py, so pytest imports each test file by its basename:
two files of one name in tests/unit and tests/integration (or tests/bench) stop the whole
collection with "import file mismatch". Caught here, one file at a time, with both paths."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_no_two_test_files_share_a_basename():
    seen: dict[str, list[str]] = defaultdict(list)
    for p in TESTS.rglob("test_*.py"):
        seen[p.name].append(str(p.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test files sharing a basename (rename one): {clashes}"


def test_every_file_with_a_cluster_marker_runs_in_the_cluster_unit():
    """`make test`'s two workers keep the SLURM files on one of them, one after another
    (tests/conftest.py, CLUSTER_FILES); a file marked `slurm` or `multinode` outside that set would
    run beside them and could meet a node the multi-node tests have taken down."""
    import re
    import sys

    sys.path.insert(0, str(TESTS))
    from conftest import CLUSTER_FILES

    marked = {p.name for p in TESTS.rglob("test_*.py")
              if re.search(r"mark\.(slurm|multinode)\b", p.read_text())}
    assert marked, "no marked file found: the pattern no longer matches"
    assert marked <= CLUSTER_FILES, sorted(marked - CLUSTER_FILES)
