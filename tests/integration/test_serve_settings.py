"""A real `llmctl serve start` prints each setting with its source (flag, serve config
file, default) before it loads the model, and in a job writes them to
RUN/serve-resolved.json (issue 19); the server runs with those values."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

pytest.importorskip("torch")


def test_serve_start_shows_and_records_its_settings(tmp_path):
    art = K.tiny_artifact(tmp_path / "art")
    conf = tmp_path / "serve.toml"
    conf.write_text("max_batch_tokens = 1024\nmax_tokens_limit = 7\nmax_queue = 3\n")
    run = tmp_path / "run"
    run.mkdir()
    server = K.Server(art, "--config", str(conf), "--max-batch-tokens", "2048",
                      env={"LLMCTL_RUN_DIR": str(run)})
    try:
        import httpx

        server.wait()
        # the file's max_tokens_limit is in force: 8 tokens are refused by name
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 8}, timeout=30)
        assert r.status_code == 400 and "max_tokens" in r.text
        doc = json.loads((run / "serve-resolved.json").read_text())
    finally:
        out = server.stop()
    file = f"serve config {conf}"
    assert doc["kind"] == "serve start" and doc["config"] == str(conf)
    s = doc["settings"]
    assert s["max_batch_tokens"] == {"value": 2048, "source": "flag --max-batch-tokens",
                                     "overrode": [{"value": 1024, "source": file}]}
    assert s["max_tokens_limit"] == {"value": 7, "source": file}
    assert s["port"] == {"value": server.port, "source": "flag --port"}
    assert s["scheduler"] == {"value": "vllm-like", "source": "default"}
    assert f"max_batch_tokens = 2048  from flag --max-batch-tokens ({file} said 1024)" in out
    assert f"max_queue = 3  from {file}" in out
    assert f"also in {run / 'serve-resolved.json'}" in out
    assert out.index("settings and their sources") < out.index("loading")  # said before the long wait
