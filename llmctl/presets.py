"""Model shapes and training defaults that `llmctl init scaffold` writes.

gpt and llama 7b-70b are the published GPT-3 and Llama 2 shapes, llama3 (Llama 3 8B/70B,
3.1 405B, 3.2 1B/3B), mistral (7B) and qwen2.5 (0.5B-72B) the published newer ones
(sources inline); tiny, 125m and 1b are small enough to train on a CPU or a single GPU. Every shape is validated by the
model config and counted by llmctl.plan.params (tests check the published counts).
"""

from __future__ import annotations

from typing import Any

# Llama 3.1/3.2's rope scaling (their config.json): 8192 positions stretched to 131072.
_LLAMA31_ROPE = dict(scaling="llama3", low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)

# (template, size) -> (model config fields, source)
MODELS: dict[tuple[str, str], tuple[dict[str, Any], str]] = {
    # --- gpt: learned positions, LayerNorm, GELU, ffn = 4h, tied head --------------
    ("gpt", "tiny"): (dict(layers=4, hidden=128, heads=4, vocab_size=4096, max_seq_len=256),
                      "llmctl: ~1.4M parameters, trains on a CPU in minutes"),
    ("gpt", "125m"): (dict(layers=12, hidden=768, heads=12, vocab_size=50257, max_seq_len=2048),
                      "GPT-3 Small (Brown et al. 2020, Table 2.1)"),
    ("gpt", "1b"): (dict(layers=24, hidden=2048, heads=16, vocab_size=50257, max_seq_len=2048),
                    "GPT-3 XL 1.3B (Brown et al. 2020, Table 2.1; 16 heads of 128)"),
    ("gpt", "7b"): (dict(layers=32, hidden=4096, heads=32, vocab_size=50257, max_seq_len=2048),
                    "GPT-3 6.7B (Brown et al. 2020, Table 2.1)"),
    ("gpt", "13b"): (dict(layers=40, hidden=5120, heads=40, vocab_size=50257, max_seq_len=2048),
                     "GPT-3 13B (Brown et al. 2020, Table 2.1; width 5120 = 40 heads of 128, "
                     "as Megatron-LM configures it, where the table prints 5140)"),
    ("gpt", "30b"): (dict(layers=48, hidden=7168, heads=56, vocab_size=50257, max_seq_len=2048),
                     "llmctl: a GPT-3-style 30B (48 x 7168, 56 heads of 128)"),
    ("gpt", "70b"): (dict(layers=88, hidden=8192, heads=64, vocab_size=50257, max_seq_len=2048),
                     "llmctl: a GPT-3-style 70B (88 x 8192, 64 heads of 128)"),
    # --- llama: RoPE, RMSNorm, SwiGLU, GQA -----------------------------------------
    ("llama", "tiny"): (dict(layers=4, hidden=128, heads=4, kv_heads=2, ffn=352, vocab_size=4096,
                             max_seq_len=256, tie_embeddings=True),
                        "llmctl: ~1.3M parameters, trains on a CPU in minutes"),
    ("llama", "125m"): (dict(layers=12, hidden=768, heads=12, ffn=2048, vocab_size=32000, max_seq_len=2048),
                        "llmctl: a Llama-style 125M class model (12 x 768)"),
    ("llama", "1b"): (dict(layers=22, hidden=2048, heads=32, kv_heads=4, ffn=5632, vocab_size=32000,
                           max_seq_len=2048),
                      "TinyLlama 1.1B (Zhang et al. 2024)"),
    ("llama", "7b"): (dict(layers=32, hidden=4096, heads=32, ffn=11008, vocab_size=32000, max_seq_len=4096),
                      "Llama 2 7B (Touvron et al. 2023, Table 1; params.json)"),
    ("llama", "13b"): (dict(layers=40, hidden=5120, heads=40, ffn=13824, vocab_size=32000, max_seq_len=4096),
                       "Llama 2 13B (Touvron et al. 2023)"),
    ("llama", "30b"): (dict(layers=60, hidden=6656, heads=52, ffn=17920, vocab_size=32000, max_seq_len=2048),
                       "LLaMA 33B (Touvron et al. 2023a, Table 2: 60 layers x 6656, 52 heads)"),
    ("llama", "70b"): (dict(layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab_size=32000,
                            max_seq_len=4096),
                       "Llama 2 70B (Touvron et al. 2023; grouped-query attention, 8 KV heads)"),
    # --- llama3: Llama 3 / 3.1 / 3.2 (Grattafiori et al. 2024, Table 3; the released
    # config.json files): vocabulary 128256, RoPE theta 500000, 8 KV heads. 3.1 and 3.2
    # extend 8192 positions to 131072 with the llama3 rope scaling.
    ("llama3", "1b"): (dict(layers=16, hidden=2048, heads=32, kv_heads=8, head_dim=64, ffn=8192,
                            vocab_size=128256, max_seq_len=131072, tie_embeddings=True, norm_eps=1e-5,
                            rope=dict(base=500000.0, **_LLAMA31_ROPE, factor=32.0)),
                       "Llama 3.2 1B (meta-llama/Llama-3.2-1B config.json; 1.24B parameters)"),
    ("llama3", "3b"): (dict(layers=28, hidden=3072, heads=24, kv_heads=8, head_dim=128, ffn=8192,
                            vocab_size=128256, max_seq_len=131072, tie_embeddings=True, norm_eps=1e-5,
                            rope=dict(base=500000.0, **_LLAMA31_ROPE, factor=32.0)),
                       "Llama 3.2 3B (meta-llama/Llama-3.2-3B config.json; 3.21B parameters)"),
    ("llama3", "8b"): (dict(layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab_size=128256,
                            max_seq_len=8192, norm_eps=1e-5, rope=dict(base=500000.0)),
                       "Llama 3 8B (Grattafiori et al. 2024, Table 3; 8.03B parameters)"),
    ("llama3", "70b"): (dict(layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab_size=128256,
                             max_seq_len=8192, norm_eps=1e-5, rope=dict(base=500000.0)),
                        "Llama 3 70B (Grattafiori et al. 2024, Table 3; 70.6B parameters)"),
    ("llama3", "405b"): (dict(layers=126, hidden=16384, heads=128, kv_heads=8, ffn=53248, vocab_size=128256,
                              max_seq_len=131072, norm_eps=1e-5,
                              rope=dict(base=500000.0, **_LLAMA31_ROPE, factor=8.0)),
                         "Llama 3.1 405B (Grattafiori et al. 2024, Table 3; 405.9B parameters)"),
    # --- mistral: Mistral 7B v0.3 (mistralai/Mistral-7B-v0.3 config.json: full attention, no
    # sliding window, vocabulary 32768, theta 1e6; Jiang et al. 2023 for the shape)
    ("mistral", "7b"): (dict(layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab_size=32768,
                             max_seq_len=32768, norm_eps=1e-5, rope=dict(base=1000000.0)),
                        "Mistral 7B v0.3 (Jiang et al. 2023; mistralai/Mistral-7B-v0.3; 7.25B parameters)"),
    # --- qwen2.5: q/k/v biases, theta 1e6, 32768 positions (Qwen team 2024, Qwen2.5
    # technical report Table 1; the Qwen/Qwen2.5-* config.json files; small ones tie the head)
    **{("qwen2.5", size): (dict(layers=layers, hidden=hidden, heads=heads, kv_heads=kv, ffn=ffn,
                                vocab_size=vocab, max_seq_len=32768, tie_embeddings=tied, norm_eps=1e-6,
                                qkv_bias=True, rope=dict(base=1000000.0)),
                           f"Qwen2.5 {label} (Qwen2.5 technical report, Table 1; Qwen/Qwen2.5-{label}; "
                           f"{published} parameters)")
       for size, label, layers, hidden, heads, kv, ffn, vocab, tied, published in (
           ("0.5b", "0.5B", 24, 896, 14, 2, 4864, 151936, True, "0.49B"),
           ("1.5b", "1.5B", 28, 1536, 12, 2, 8960, 151936, True, "1.54B"),
           ("3b", "3B", 36, 2048, 16, 2, 11008, 151936, True, "3.09B"),
           ("7b", "7B", 28, 3584, 28, 4, 18944, 152064, False, "7.61B"),
           ("14b", "14B", 48, 5120, 40, 8, 13824, 152064, False, "14.7B"),
           ("32b", "32B", 64, 5120, 40, 8, 27648, 152064, False, "32.5B"),
           ("72b", "72B", 80, 8192, 64, 8, 29568, 152064, False, "72.7B"))},
}
# The model config's template (architecture) of each preset family.
TEMPLATE = {"gpt": "gpt", "llama": "llama", "llama3": "llama", "mistral": "llama", "qwen2.5": "llama"}
# Published parameter counts (billions) the presets are checked against (tests/unit/test_params.py).
PUBLISHED_B = {("llama3", "1b"): 1.24, ("llama3", "3b"): 3.21, ("llama3", "8b"): 8.03, ("llama3", "70b"): 70.6,
               ("llama3", "405b"): 405.9, ("mistral", "7b"): 7.25, ("qwen2.5", "0.5b"): 0.49,
               ("qwen2.5", "1.5b"): 1.54, ("qwen2.5", "3b"): 3.09, ("qwen2.5", "7b"): 7.61,
               ("qwen2.5", "14b"): 14.7, ("qwen2.5", "32b"): 32.5, ("qwen2.5", "72b"): 72.7}

# size -> training defaults (sequence length is the model's max_seq_len unless given)
TRAINING: dict[str, dict[str, Any]] = {
    "tiny": dict(seq_len=128, micro_batch=4, global_batch=8, lr=1e-3, max_steps=300, warmup=30,
                 zero_stage=0, eval_interval=100, ckpt_interval=100, log_interval=10),
    "125m": dict(micro_batch=8, global_batch=256, lr=6e-4, max_steps=100_000, warmup=2000,
                 zero_stage=0, eval_interval=1000, ckpt_interval=1000, log_interval=10),
    "1b": dict(micro_batch=4, global_batch=512, lr=3e-4, max_steps=100_000, warmup=2000,
               zero_stage=1, eval_interval=1000, ckpt_interval=1000, log_interval=10),
    "7b": dict(micro_batch=4, global_batch=512, lr=3e-4, max_steps=250_000, warmup=2000,
               zero_stage=2, eval_interval=2000, ckpt_interval=1000, log_interval=10),
    "13b": dict(micro_batch=2, global_batch=1024, lr=3e-4, max_steps=250_000, warmup=2000,
                zero_stage=2, eval_interval=2000, ckpt_interval=1000, log_interval=10),
    "30b": dict(micro_batch=1, global_batch=1024, lr=1.5e-4, max_steps=250_000, warmup=2000,
                zero_stage=3, eval_interval=2000, ckpt_interval=500, log_interval=10),
    "70b": dict(micro_batch=1, global_batch=1024, lr=1.5e-4, max_steps=250_000, warmup=2000,
                zero_stage=3, eval_interval=2000, ckpt_interval=500, log_interval=10),
}
# The newer families' sizes train like their nearest neighbour, at a 4096-token context
# (their long contexts come from a later extension stage).
for _size, _like in (("0.5b", "125m"), ("1.5b", "1b"), ("3b", "1b"), ("8b", "7b"), ("14b", "13b"),
                     ("32b", "30b"), ("72b", "70b"), ("405b", "70b")):
    TRAINING[_size] = dict(TRAINING[_like], seq_len=4096)
TRAINING["405b"] = dict(TRAINING["405b"], lr=8e-5)  # Grattafiori et al. 2024, section 3.4.1


def model_fields(template: str, size: str) -> dict[str, Any]:
    """The full, explicit model config for `template`/`size` (every default spelled out)."""
    fields, _ = MODELS[(template, size)]
    data: dict[str, Any] = {"name": f"{template}-{size}", "arch": "decoder-only", "template": TEMPLATE[template]}
    data.update(fields)
    return data


def source(template: str, size: str) -> str:
    """Where the shape comes from."""
    return MODELS[(template, size)][1]
