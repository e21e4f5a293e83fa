"""Speed switches through the real trainer on CPU: a run with `training.compile = true` and
`kernels.fused_qkv = true` follows the plain run's losses, and its checkpoint exports to a
folder transformers loads with the fused model's logits (the names never changed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import trainkit as T  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

FAST = "\n[kernels]\nfused_qkv = true\n"


def test_compiled_fused_run_follows_plain_and_exports(tmp_path, cli):
    from safetensors.torch import load_model

    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer

    root = T.make_project(tmp_path, docs=20)
    T.prepare_data(root)
    plain = T.make_run(root, "plain", steps=4, interval=4, eval_interval=4)
    fast = T.make_run(root, "fast", steps=4, interval=4, eval_interval=4, extra=FAST)
    cfg = (fast / "config.toml").read_text().replace("log_interval = 1\n", "log_interval = 1\ncompile = true\n")
    (fast / "config.toml").write_text(cfg)
    for run in (plain, fast):
        r = T.run_train(run, timeout=600)
        assert r.returncode == 0, r.stderr
    start = T.records(fast, "start")[0]
    assert start["compile"] is True and start["fused_qkv"] is True
    assert T.records(plain, "start")[0]["compile"] is False  # auto on a CPU
    a = [r["loss"] for r in T.records(plain, "train")]
    b = [r["loss"] for r in T.records(fast, "train")]
    assert len(a) == len(b) == 4 and b == pytest.approx(a, rel=2e-3)

    r = cli("export", "--checkpoint", str(fast), "--out", "artifacts/fast", "--dtype", "fp32", cwd=root)
    assert r.returncode == 0, r.stderr
    hf = transformers.AutoModelForCausalLM.from_pretrained(root / "artifacts/fast", dtype=torch.float32).eval()
    ours = Transformer(ModelConfig(**T.TINY_MODEL)).eval()
    load_model(ours, str(fast / "checkpoints" / "step-00000004" / "model.safetensors"), strict=False)
    ours.set_fused_qkv(True)
    ids = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() < 1e-4


def test_compile_true_refused_with_several_ranks(tmp_path):
    root = T.make_project(tmp_path, docs=20)
    T.prepare_data(root)
    run = T.make_run(root, "r", steps=2, interval=2, eval_interval=2)
    (run / "config.toml").write_text((run / "config.toml").read_text()
                                     .replace("log_interval = 1\n", "log_interval = 1\ncompile = true\n"))
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "llmctl.train", "--run-dir", str(run)]
    r = subprocess.run(cmd, cwd=run, env=T.quiet_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "training.compile = true is not supported with 2 ranks" in r.stderr
