"""Fine-tuning from pretrained weights, end to end through the CLI and the real trainer:
a small Qwen2 made by transformers (with a tokenizer whose chat template uses special
tokens) is imported with `llmctl export --artifact`, fine-tuned a few steps from it
(`[init] from`) on a JSONL chat file rendered through its chat template with the loss on
the answers only, exported with `llmctl export`, and loaded back in transformers, whose
logits equal llmctl's."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("h5py")
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

import trainkit as T  # noqa: E402

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = "the cat sat on a mat and then it ran to the red barn where two dogs slept in warm hay".split()


def _conversations(n: int) -> list[dict]:
    out = []
    for i in range(n):
        q = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6))
        a = " ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(9))
        out.append({"messages": [{"role": "system", "content": "answer briefly"},
                                 {"role": "user", "content": f"what about {q}?"},
                                 {"role": "assistant", "content": a}]})
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    root = tmp_path_factory.mktemp("ft")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 50 + ["what about answer briefly system user assistant ?"] * 20,
                            trainer)
    vocab = tok.get_vocab_size()
    cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=True, eos_token_id=0, bos_token_id=0)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    hf.save_pretrained(root / "hf")
    tok.save(str(root / "hf" / "tokenizer.json"))
    (root / "hf" / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "chat_template": TEMPLATE}))
    (root / "chat.jsonl").write_text("\n".join(json.dumps(c) for c in _conversations(60)) + "\n")
    (root / "data.toml").write_text(
        'name = "chat"\nval_fraction = 0.2\nseed = 3\n\n[[sources]]\ntype = "chat"\npaths = ["chat.jsonl"]\n\n'
        '[tokenizer]\ntype = "file"\npath = "imported/tokenizer.json"\neos_token = "<|endoftext|>"\n\n'
        '[output]\ndir = "data/chat"\n')
    run = root / "runs" / "ft"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(T.train_toml(
        steps=6, interval=6, keep_last=None, warmup=2, micro_batch=2, global_batch=4, eval_batches=1, lr=0.001,
        seed=1, model="qwen-ft", model_file=None, init_from="imported", data_file="data.toml"))
    return root, hf


def test_import_finetune_export_round_trip(project, cli):
    from llmctl.config.model import ModelConfig
    from llmctl.data.shards import TokenStore
    from llmctl.model.transformer import Transformer
    from llmctl.parallel.checkpoint import load_weights

    root, hf = project
    r = cli("export", "--artifact", "hf", "--out", "imported", cwd=root)
    assert r.returncode == 0, r.stderr
    assert (root / "imported" / "tokenizer_config.json").is_file()  # the chat template travels
    r = cli("data", "prepare", "--config", "data.toml", "--workers", "1", cwd=root)
    assert r.returncode == 0, r.stderr

    # the loss mask covers exactly the answers (and the end-of-text after each)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(root / "imported" / "tokenizer.json"))
    store = TokenStore(root / "data" / "chat", "train")
    assert store.has_mask
    ids, mask = store.read(0, 200), store.read_mask(0, 200)
    first_end = list(ids).index(tok.token_to_id("<|endoftext|>"))
    answer = tok.decode([int(t) for t, m in zip(ids[:first_end + 1], mask) if m], skip_special_tokens=False)
    prompt = tok.decode([int(t) for t, m in zip(ids[:first_end + 1], mask) if not m], skip_special_tokens=False)
    assert answer.endswith("<|im_end|>\n<|endoftext|>") and "what about" not in answer
    assert prompt.startswith("<|im_start|>system\nanswer briefly") and prompt.endswith("<|im_start|>assistant\n")
    store.close()

    r = T.run_train(root / "runs" / "ft")
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [t["loss"] for t in T.records(root / "runs" / "ft", "train")]
    assert len(losses) == 6 and all(l == l for l in losses) and losses[-1] < losses[0]
    start = T.records(root / "runs" / "ft", "start")[0]
    assert start["params"] == sum(p.numel() for p in hf.parameters())

    # it started from the pretrained weights: a few small steps away from them
    ckpt = root / "runs" / "ft" / "checkpoints" / "step-00000006"
    cfg = ModelConfig(**json.loads((root / "imported" / "model.json").read_text()))
    ours = Transformer(cfg).eval()
    load_weights(ckpt, ours)
    ref = dict(hf.named_parameters())
    moved = (ours.blocks[0].attn.wq.weight - ref["model.layers.0.self_attn.q_proj.weight"]).norm()
    assert 0 < moved.item() < 0.2 * ref["model.layers.0.self_attn.q_proj.weight"].norm().item()

    r = cli("export", "--checkpoint", "runs/ft", "--out", "artifacts/ft", "--dtype", "fp32", cwd=root)
    assert r.returncode == 0, r.stderr
    back = transformers.AutoModelForCausalLM.from_pretrained(root / "artifacts" / "ft", dtype=torch.float32).eval()
    assert type(back).__name__ == "Qwen2ForCausalLM"
    x = torch.tensor([tok.encode("<|im_start|>user\nwhat about the cat?<|im_end|>\n").ids])
    with torch.no_grad():
        assert (back(x).logits - ours(x)).abs().max().item() <= 1e-4
        assert (back(x).logits - hf(x).logits).abs().max().item() > 1e-4  # and it did change


def test_init_from_a_folder_that_is_not_a_model_is_one_line(project, cli, tmp_path):
    root, _ = project
    run = root / "runs" / "bad"
    run.mkdir(exist_ok=True)
    (run / "config.toml").write_text((root / "runs" / "ft" / "config.toml").read_text()
                                     .replace('from = "imported"', 'from = "data.toml"'))
    r = T.run_train(run)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not a pretrained model folder" in r.stderr or "init.from" in r.stderr
