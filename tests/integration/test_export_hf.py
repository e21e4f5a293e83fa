"""`llmctl export` against real transformers: a trained checkpoint exported at fp32
loads in AutoModelForCausalLM with logits within 1e-4 of llmctl's; a Llama folder
that transformers saved serves with greedy output equal to its `generate`."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402
import trainkit as T  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = T.make_project(tmp_path_factory.mktemp("proj"), docs=20)
    T.prepare_data(root)
    run = T.make_run(root, "r1", steps=6, interval=6, eval_interval=6)
    r = T.run_train(run)
    assert r.returncode == 0, r.stderr
    return root, run


def test_checkpoint_exports_and_transformers_logits_match(trained, cli):
    from safetensors.torch import load_model

    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer

    root, run = trained
    r = cli("export", "--checkpoint", str(run), "--out", "artifacts/tiny", "--dtype", "fp32", cwd=root)
    assert r.returncode == 0, r.stderr
    art = root / "artifacts" / "tiny"
    manifest = json.loads((art / "llmctl-manifest.json").read_text())
    assert manifest["source_checkpoint"].endswith("step-00000006")
    assert set(manifest["files"]) >= {"model.safetensors", "config.json", "tokenizer.json"}
    # Teammates read the artifact: every file gets the umask's mode (0644 under 022), weights too.
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in art.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes

    hf = transformers.AutoModelForCausalLM.from_pretrained(art, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ours = Transformer(ModelConfig(**T.TINY_MODEL)).eval()
    load_model(ours, str(run / "checkpoints" / "step-00000006" / "model.safetensors"), strict=False)
    tok = transformers.AutoTokenizer.from_pretrained(art)
    ids = tok("def parse(self, text):\n    return", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids)).abs().max().item()
    assert diff < 1e-4
    # the tokenizer files work in transformers and agree with the one llmctl trained
    from tokenizers import Tokenizer

    assert ids[0].tolist() == Tokenizer.from_file(str(root / "data/tiny/tokenizer.json")).encode(
        "def parse(self, text):\n    return").ids


def test_gpt_exports_as_gpt2(tmp_path):
    art = K.tiny_artifact(tmp_path, K.TINY_GPT)
    hf = transformers.AutoModelForCausalLM.from_pretrained(art, dtype=torch.float32).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    x = torch.randint(0, 384, (2, 40))
    with torch.no_grad():
        assert (hf(x).logits - K.tiny_model(K.TINY_GPT)(x)).abs().max().item() < 1e-4


def test_transformers_llama_folder_serves_like_generate(tmp_path, cli):
    from llmctl.export.hf import load_artifact
    from llmctl.serve.engine import Engine
    from llmctl.serve.sequence import SamplingParams

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    prompts = [[3, 14, 15, 92, 65], [7] * 20, list(range(40, 75))]
    want = []
    for p in prompts:
        out = hf.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                          pad_token_id=0, min_new_tokens=16)
        want.append(out[0, len(p):].tolist())
    eng = Engine.from_artifact(load_artifact(tmp_path / "hf"), block_size=8)
    got = eng.generate(prompts, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
    assert [g.output_ids for g in got] == want
    # and the other way: import into llmctl's own format
    r = cli("export", "--artifact", str(tmp_path / "hf"), "--out", str(tmp_path / "ours"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ours" / "model.json").read_text())["kv_heads"] == 2


def test_bad_input_is_one_clean_line(tmp_path, cli):
    r = cli("export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "checkpoint not found" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "mamba"}')
    r = cli("export", "--artifact", str(tmp_path / "bad"), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "model_type 'mamba' is not supported" in r.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / ".tmp-b").exists()


def test_int8_export_serves_close_to_fp32(trained, cli):
    from llmctl.export.hf import load_artifact

    root, run = trained
    r = cli("export", "--checkpoint", str(run), "--out", "artifacts/q8", "--dtype", "fp32", "--quantize", "int8",
            cwd=root)
    assert r.returncode == 0, r.stderr
    q8, fp = root / "artifacts" / "q8", root / "artifacts" / "fp"
    assert cli("export", "--checkpoint", str(run), "--out", str(fp), "--dtype", "fp32").returncode == 0
    assert (q8 / "model.safetensors").stat().st_size < 0.7 * (fp / "model.safetensors").stat().st_size
    x = torch.randint(0, 512, (1, 40))
    with torch.no_grad():
        a, b = load_artifact(q8).model(x), load_artifact(fp).model(x)
    # per-channel int8 keeps the logits close (relative to their spread)
    assert ((a - b).abs().max() / b.std()).item() < 0.1
    assert ((a - b).abs().max()).item() > 0  # and it did quantise
