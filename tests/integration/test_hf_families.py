"""Hugging Face families against real transformers, on random small models it saves:
Llama (GQA, tied head, biases, GeGLU, rope_scaling linear / dynamic / llama3 / yarn),
Mistral, Qwen2 (q/k/v bias) and GPT-2 (untied head, scale_attn_by_inverse_layer_idx,
activation variants). For each: imported, llmctl's fp32 logits are within 1e-4 of
transformers'; exported back, transformers loads the folder and matches too; greedy
generation of 32 tokens is identical. Every field of each transformers config class is
honoured or refused (a test walks them), and refused configs exit 2 naming the field.
"""

from __future__ import annotations

import inspect
import json
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

LOGIT_TOL = 1e-4
SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)
GPT2_SMALL = dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128)

CASES = {
    "llama": ("LlamaConfig", {}),
    "llama_tied_headdim": ("LlamaConfig", {"tie_word_embeddings": True, "head_dim": 24}),
    "llama_attn_bias_only": ("LlamaConfig", {"attention_bias": True, "mlp_bias": False}),
    "llama_biases": ("LlamaConfig", {"attention_bias": True, "mlp_bias": True}),
    "llama_gelu": ("LlamaConfig", {"hidden_act": "gelu"}),
    "llama3_rope": ("LlamaConfig", {"max_position_embeddings": 512, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "linear_rope": ("LlamaConfig", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}}),
    "dynamic_rope": ("LlamaConfig", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}}),
    "yarn_rope": ("LlamaConfig", {"max_position_embeddings": 512, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128}}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "gpt2": ("GPT2Config", {}),
    "gpt2_untied": ("GPT2Config", {"tie_word_embeddings": False}),
    "gpt2_layer_scale": ("GPT2Config", {"scale_attn_by_inverse_layer_idx": True}),
    "gpt2_relu": ("GPT2Config", {"activation_function": "relu"}),
    "gpt2_gelu": ("GPT2Config", {"activation_function": "gelu"}),
}


def _save(tmp_path, name: str, seed: int = 0):
    cls_name, extra = CASES[name]
    cls = getattr(transformers, cls_name)
    base = GPT2_SMALL if cls_name == "GPT2Config" else SMALL
    cfg = cls(**{**base, **extra})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random biases (transformers starts them at zero) so they count
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.05)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return model, folder


def _greedy(model, ids, n: int):
    out = ids
    for _ in range(n):
        with torch.no_grad():
            nxt = model(out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_import_export_logits_and_greedy_generation(tmp_path, name):
    from llmctl.export.hf import load_artifact, write_artifact

    hf, folder = _save(tmp_path, name)
    art = load_artifact(folder)
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got = art.model(ids)
    assert (got - want).abs().max().item() <= LOGIT_TOL, name
    # export back: transformers loads it and computes the same
    out = write_artifact(art.cfg, dict(art.model.state_dict()), tmp_path / f"{name}-out", "fp32", None, None,
                         {"source_artifact": str(folder)})
    again = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(again).__name__ == type(hf).__name__ or json.loads((out / "config.json").read_text())["model_type"] \
        in ("llama", "qwen2")
    with torch.no_grad():
        assert (again(ids).logits - want).abs().max().item() <= LOGIT_TOL, name
    # greedy generation: transformers' generate (its KV cache) against llmctl's model
    prompt = ids[:1, :8]
    gen = hf.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    assert gen.shape[1] == 40
    assert _greedy(art.model, prompt, 32).tolist() == gen.tolist(), name


def test_gpt2_import_then_export_command_does_not_crash(tmp_path, cli):
    """`export --artifact` on GPT-2 crashed on q/k/v views of one storage (issue 16)."""
    _, folder = _save(tmp_path, "gpt2_untied")
    r = cli("export", "--artifact", str(folder), "--out", str(tmp_path / "imported"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "imported" / "model.json").read_text())
    assert data["tie_embeddings"] is False and data["template"] == "gpt"


def _parse(cj):
    from llmctl.export import families

    f = families._Fields(cj, "config.json", cj["model_type"])
    return f, families.model_config_from_hf(cj, "config.json")


@pytest.mark.parametrize("cls_name", ["LlamaConfig", "MistralConfig", "Qwen2Config", "GPT2Config"])
def test_every_field_of_the_transformers_config_class_is_honoured_or_refused(cls_name):
    """Walk the config class's fields (its to_dict and its __init__ signature): each is read by
    the family's import, or known not to change the model (metadata, training-only dropout)."""
    from llmctl.export import families

    cls = getattr(transformers, cls_name)
    small = GPT2_SMALL if cls_name == "GPT2Config" else SMALL
    cj = cls(**small).to_dict()
    if cls_name == "MistralConfig":
        cj["sliding_window"] = None
    fields = set(cj) | (set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"})
    read = []
    real = families._Fields.finish

    def spy(self):
        read.extend(self.used)
        return real(self)

    families._Fields.finish = spy
    try:
        families.model_config_from_hf(cj, "config.json")
    finally:
        families._Fields.finish = real
    unaccounted = sorted(k for k in fields if k not in set(read) | families.METADATA | families.DROPOUT)
    assert not unaccounted, f"{cls_name}: fields neither honoured nor refused: {unaccounted}"
    # and one it has never heard of is refused, naming it
    with pytest.raises(Exception, match="no_such_field"):
        families.model_config_from_hf({**cj, "no_such_field": 1}, "config.json")


REFUSED = [
    ("LlamaConfig", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "factor": 2.0,
                                         "short_factor": [1.0], "long_factor": [1.0]}}, "rope_type"),
    ("LlamaConfig", {"hidden_act": "tanh"}, "hidden_act"),
    ("LlamaConfig", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                         "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ("MistralConfig", {"sliding_window": 32}, "sliding_window"),
    ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 16}, "sliding_window"),
    ("GPT2Config", {"activation_function": "tanh"}, "activation_function"),
    ("GPT2Config", {"scale_attn_weights": False}, "scale_attn_weights"),
    ("GPT2Config", {"add_cross_attention": True}, "add_cross_attention"),
]


@pytest.mark.parametrize("cls_name,extra,field", REFUSED, ids=[f"{c}-{f}" for c, _, f in REFUSED])
def test_refused_configs_exit_2_naming_the_field(tmp_path, cli, cls_name, extra, field):
    small = GPT2_SMALL if cls_name == "GPT2Config" else SMALL
    cj = getattr(transformers, cls_name)(**small).to_dict()
    cj.update(extra)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cj))
    r = cli("export", "--artifact", str(folder), "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("error: ") and field in first and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_dynamic_rope_beyond_the_trained_context_matches(tmp_path):
    """Dynamic NTK scaling changes the base only past max_position_embeddings: compare there."""
    from llmctl.export.hf import load_artifact

    hf, folder = _save(tmp_path, "dynamic_rope")
    art = load_artifact(folder)
    ids = torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (art.model(ids) - hf(ids).logits).abs().max().item() <= LOGIT_TOL
