"""A config path that is not a readable file says why: not found, directory, symlink loop, permission (issue 13)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmctl.config import load
from llmctl.errors import ConfigError
from llmctl.resources import data_dir
from llmctl.sites import find_site, list_sites, load_site

LOCAL_SITE = (data_dir("site-configs") / "local.toml").read_text()


def _loop(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    other = tmp_path / f"other-{name}"
    p.symlink_to(other)
    other.symlink_to(p)
    return p


def _cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "dir.toml").mkdir()
    dangling = tmp_path / "dangling.toml"
    dangling.symlink_to(tmp_path / "gone.toml")
    (tmp_path / "file").write_text("x")
    return {
        "missing": (tmp_path / "nope.toml", "file not found"),
        "directory": (tmp_path / "dir.toml", "is a directory"),
        "loop": (_loop(tmp_path, "loop.toml"), "symlink loop"),
        "self-loop": (tmp_path / "self.toml", "symlink loop"),
        "dangling": (dangling, "broken symlink"),
        "not-a-dir": (tmp_path / "file" / "x.toml", "not a directory"),
    }


CASES = ["missing", "directory", "loop", "self-loop", "dangling", "not-a-dir"]


@pytest.fixture
def cases(tmp_path):
    (tmp_path / "self.toml").symlink_to(tmp_path / "self.toml")
    return _cases(tmp_path)


@pytest.mark.parametrize("case", CASES)
def test_config_path_problems_have_their_own_words(cases, case):
    path, words = cases[case]
    with pytest.raises(ConfigError) as e:
        load("train", path)
    (line,) = e.value.problems
    assert words in line, line
    if case != "missing":
        assert "not found" not in line or case == "not-a-dir"


@pytest.mark.parametrize("case", CASES)
def test_site_config_path_problems_have_their_own_words(cases, case):
    path, words = cases[case]
    with pytest.raises(ConfigError) as e:
        find_site(str(path))
    assert words in e.value.problems[0]


def test_permission_denied(tmp_path, monkeypatch):
    p = tmp_path / "local.toml"
    p.write_text(LOCAL_SITE)
    if os.geteuid() == 0:  # root reads anything: make the read itself fail as it would for a user
        def denied(self, *a, **k):
            raise PermissionError(13, "Permission denied", str(self))
        monkeypatch.setattr(Path, "read_text", denied)
    else:
        p.chmod(0)
    with pytest.raises(ConfigError) as e:
        load_site(str(p))
    assert e.value.problems == ["permission denied"]


def test_a_site_found_by_name_that_is_a_directory_or_loop_is_not_skipped(in_tmp):
    # Before: the project's broken local.toml was passed over for the shipped one.
    (in_tmp / "site-configs").mkdir()
    (in_tmp / "site-configs" / "local.toml").mkdir()
    with pytest.raises(ConfigError) as e:
        find_site("local")
    assert "is a directory" in e.value.problems[0] and "site-configs/local.toml" in e.value.path
    _loop(in_tmp / "site-configs", "mine.toml")
    with pytest.raises(ConfigError, match="symlink loop"):
        find_site("mine")
    rows = {r["name"]: r for r in list_sites()}
    assert "symlink loop" in rows["mine"]["description"]


def test_site_list_does_not_print_escape_sequences(in_tmp):
    (in_tmp / "site-configs").mkdir()
    (in_tmp / "site-configs" / "evil.toml").write_text(
        LOCAL_SITE.replace('name = "local"', 'name = "evil"').replace('description = "', 'description = "\\u001b[2J'))
    (row,) = [r for r in list_sites() if r["name"] == "evil"]
    assert "\x1b" not in row["description"] and "U+001B ESCAPE" in row["description"]


@pytest.mark.parametrize("args,words", [
    (("site", "check", "./dir.toml"), "is a directory"),
    (("site", "check", "./loop.toml"), "symlink loop"),
    (("schema", "train", "--check", "loop.toml"), "symlink loop"),
    (("site", "show", "./nope.toml"), "site-config file not found"),
])
def test_cli_exit_2_without_traceback(tmp_path, cli, args, words):
    (tmp_path / "dir.toml").mkdir()
    _loop(tmp_path, "loop.toml")
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert words in r.stderr, r.stderr
