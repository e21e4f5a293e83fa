"""`llmctl serve start`'s settings and their sources (llmctl/serve/resolved.py): a flag
given wins over the serve config file, which wins over the defaults; a flag left at its
default never overrides the file; a bad file fails before anything loads (issue 19)."""

from __future__ import annotations

import pytest

from conftest import run_cli
from llmctl.errors import LlmctlError
from llmctl.serve.resolved import document, lines, resolve


def flags(**given):
    """The serve start flags as click passes them: every option, given or at its default."""
    defaults = {"artifact": None, "host": "127.0.0.1", "port": 8080, "scheduler": "vllm-like",
                "max_batch_tokens": 8192, "api_key_env": None, "max_queue": None, "prefix_caching": None,
                "mpi_mode": "tp"}
    return {k: (given.get(k, v), k in given) for k, v in defaults.items()}


def test_flag_over_file_over_default(tmp_path):
    conf = tmp_path / "serve.toml"
    conf.write_text('max_batch_tokens = 1024\nkv_block_size = 8\nscheduler = "fcfs"\nprefix_caching = false\n')
    cfg, table = resolve(str(conf), flags(artifact="art", max_batch_tokens=2048, port=9000))
    file = f"serve config {conf}"
    assert (cfg.max_batch_tokens, cfg.kv_block_size, cfg.scheduler, cfg.port) == (2048, 8, "fcfs", 9000)
    assert table["max_batch_tokens"] == {"value": 2048, "source": "flag --max-batch-tokens",
                                         "overrode": [{"value": 1024, "source": file}]}
    # the --scheduler flag at its default does not undo the file's fcfs
    assert table["scheduler"] == {"value": "fcfs", "source": file}
    assert table["kv_block_size"] == {"value": 8, "source": file}
    assert table["prefix_caching"] == {"value": False, "source": file}
    assert table["port"] == {"value": 9000, "source": "flag --port"}
    assert table["max_queue"] == {"value": 256, "source": "default"}
    assert set(table) == set(type(cfg).model_fields)  # every setting, none left out
    shown = "\n".join(lines(table))
    assert f"max_batch_tokens = 2048  from flag --max-batch-tokens ({file} said 1024)" in shown
    assert document(str(conf), table)["config"] == str(conf)


def test_no_config_and_a_negative_flag(tmp_path):
    cfg, table = resolve(None, flags(artifact="art", prefix_caching=False))
    assert cfg.prefix_caching is False
    assert table["prefix_caching"] == {"value": False, "source": "flag --no-prefix-caching"}
    assert table["host"] == {"value": "127.0.0.1", "source": "default"}
    assert document(None, table)["config"] is None


def test_bad_serve_config_is_one_line_before_the_model_loads(tmp_path):
    conf = tmp_path / "serve.toml"
    conf.write_text("max_batch_token = 1024\n")
    with pytest.raises(LlmctlError):
        resolve(str(conf), flags())
    (tmp_path / "art").mkdir()
    r = run_cli("serve", "start", "--artifact", "art", "--config", "serve.toml", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "serve.toml" in r.stderr and "max_batch_token" in r.stderr and "loading" not in r.stdout
