"""The streaming safetensors writer: what it writes is what safetensors and transformers
read, in one file or in shards with their index, and each tensor is made only when it is
written."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

MODEL = {"name": "llama-s", "template": "llama", "layers": 3, "hidden": 32, "ffn": 64, "heads": 4, "kv_heads": 2,
         "vocab_size": 96, "max_seq_len": 32}


def test_one_file_reads_back_with_safetensors(tmp_path):
    from safetensors.torch import load_file

    from llmctl.export.stream import Entry, write_sharded

    made = []
    ts = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int8), "c": torch.randn(4).bfloat16(),
          "d": torch.zeros(0, 3)}

    def maker(k):
        def make():
            made.append(k)
            return ts[k]
        return make

    entries = [Entry(k, tuple(v.shape), v.dtype, maker(k)) for k, v in ts.items()]
    assert not made  # nothing read while planning
    write_sharded(tmp_path, entries, {"format": "pt"})
    assert made == list(ts)
    back = load_file(str(tmp_path / "model.safetensors"))
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_sharded_export_loads_in_transformers(tmp_path, monkeypatch):
    from llmctl.config.model import ModelConfig
    from llmctl.export import stream
    from llmctl.export.hf import load_artifact, write_artifact
    from llmctl.model.transformer import Transformer

    monkeypatch.setattr(stream, "MAX_SHARD_BYTES", 20_000)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**MODEL)).eval()
    out = write_artifact(model.cfg, dict(model.state_dict()), tmp_path / "art", "fp32", None, None, {})
    index = json.loads((out / stream.INDEX).read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2 and all((out / f).is_file() for f in files) and not (out / "model.safetensors").exists()
    x = torch.randint(0, 96, (2, 20))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(x)
        assert (hf(x).logits - want).abs().max().item() <= 1e-5
        assert (load_artifact(out).model(x) - want).abs().max().item() == 0
