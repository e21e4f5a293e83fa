"""Site-configs: every shipped one loads and checks; the look-up order holds."""

from __future__ import annotations

import json
import shutil

import pytest

from llmctl.config.base import load_config
from llmctl.config.site import SiteConfig, parse_time_limit
from llmctl.errors import ConfigError, LlmctlError
from llmctl.resources import data_dir
from llmctl.sites import check_site, find_site, list_sites, load_site

SHIPPED = sorted(p.stem for p in data_dir("site-configs").glob("*.toml"))


def test_ships_the_examples_a_site_admin_starts_from():
    cfgs = {n: load_config(data_dir("site-configs") / f"{n}.toml", SiteConfig) for n in SHIPPED}
    assert cfgs["local"].scheduler == "local"
    kinds = {(c.scheduler, c.container.runtime, c.gpu_request, c.pbs_dialect if c.scheduler == "pbs" else None)
             for c in cfgs.values()}
    assert ("slurm", "none", "gres", None) in kinds              # A100 + InfiniBand, modules
    assert ("slurm", "pyxis", "gpus-per-node", None) in kinds    # H100 + pyxis containers
    assert any(k[0] == "pbs" and k[3] == "pbspro" for k in kinds)
    assert any(k[0] == "pbs" and k[3] == "torque" for k in kinds)
    assert any(k[0] == "k8s" for k in kinds)
    a100 = cfgs["slurm-a100-ib"].partition()
    assert (a100.gpus_per_node, a100.gpu_model) == (8, "NVIDIA A100-SXM4-80GB")
    assert cfgs["slurm-a100-ib"].network.inter_node == "InfiniBand"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_site_checks(name, in_tmp):
    report = check_site(name)
    assert report["ok"] and report["name"] == name


def test_lookup_order(in_tmp, monkeypatch, tmp_path_factory):
    local_text = (data_dir("site-configs") / "local.toml").read_text()
    env_dir = tmp_path_factory.mktemp("env-sites")
    (env_dir / "local.toml").write_text(local_text.replace("This machine", "ENV copy"))
    (env_dir / "only-env.toml").write_text(local_text.replace('name = "local"', 'name = "only-env"'))
    monkeypatch.setenv("LLMCTL_SITE_CONFIGS", f"/nonexistent:{env_dir}")
    assert find_site("local") == env_dir / "local.toml"            # env beats shipped
    (in_tmp / "site-configs").mkdir()
    (in_tmp / "site-configs/local.toml").write_text(local_text.replace("This machine", "PROJECT copy"))
    assert find_site("local").resolve() == (in_tmp / "site-configs/local.toml").resolve()  # project beats env
    assert find_site("only-env") == env_dir / "only-env.toml"
    assert find_site("slurm-a100-ib").parent == data_dir("site-configs")  # shipped as the last resort
    explicit = in_tmp / "custom.toml"
    shutil.copy(data_dir("site-configs") / "local.toml", explicit)
    assert find_site(str(explicit)) == explicit                      # --site PATH wins outright
    rows = [r for r in list_sites() if r["name"] == "local"]
    assert [r["origin"] for r in rows] == ["project", "env", "shipped"]
    assert [r["shadowed"] for r in rows] == [False, True, True]


def test_unknown_site_lists_known_ones(in_tmp):
    with pytest.raises(LlmctlError) as e:
        find_site("nope")
    assert "slurm-a100-ib" in e.value.hint


def test_check_rejects_name_that_differs_from_file(in_tmp):
    p = in_tmp / "mycluster.toml"
    p.write_text((data_dir("site-configs") / "local.toml").read_text())
    with pytest.raises(ConfigError, match="differs from the file name 'mycluster'"):
        check_site(str(p))


@pytest.mark.parametrize("edit,message", [
    (('default_partition = "local"', 'default_partition = "gpu"'), "default_partition 'gpu' is not one of"),
    (('max_time = "7-00:00:00"', 'max_time = "forever"'), "partitions.local.max_time: time limit 'forever'"),
    (('OMP_NUM_THREADS = "1"', '"BAD NAME" = "1"'), "not valid environment variable names"),
    (('scheduler = "local"', 'scheduler = "lsf"'), "scheduler: Input should be"),
    (("cpus_per_node = 2", "cpus_per_node = 0"), "partitions.local.cpus_per_node"),
])
def test_bad_site_configs(in_tmp, edit, message):
    p = in_tmp / "local.toml"
    p.write_text((data_dir("site-configs") / "local.toml").read_text().replace(*edit))
    with pytest.raises(ConfigError) as e:
        load_site(str(p))
    assert message in e.value.message


@pytest.mark.parametrize("text,seconds", [("30", 1800), ("01:00:00", 3600), ("2-00:00:00", 172800),
                                          ("1-12", 129600), ("10:30", 630)])
def test_time_limits(text, seconds):
    assert parse_time_limit(text) == seconds


def test_site_cli_commands(cli, in_tmp):
    r = cli("site", "list", "--json")
    assert r.returncode == 0
    assert {e["name"] for e in json.loads(r.stdout)} >= set(SHIPPED)
    r = cli("site", "show", "slurm-h100-pyxis")
    assert r.returncode == 0 and 'runtime = "pyxis"' in r.stdout
    r = cli("site", "check", "local", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    bad = in_tmp / "broken.toml"
    bad.write_text("name = 'broken'\nscheduler = 'slurm'\n")
    r = cli("site", "check", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "default_partition: required key is missing" in r.stderr
