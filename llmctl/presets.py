"""Model shapes and training defaults that `llmctl init scaffold` writes.

7b-70b are the published architectures (sources inline); tiny, 125m and 1b are
small enough to train on a CPU or a single GPU. Every shape is validated by the
model config and counted by llmctl.plan.params (tests check the published counts).
"""

from __future__ import annotations

from typing import Any

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
}

# size -> training defaults (sequence length is the model's max_seq_len unless given)
TRAINING: dict[str, dict[str, Any]] = {
    "tiny": dict(seq_len=256, micro_batch=4, global_batch=16, lr=1e-3, max_steps=300, warmup=30,
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


def model_fields(template: str, size: str) -> dict[str, Any]:
    """The full, explicit model config for `template`/`size` (every default spelled out)."""
    fields, _ = MODELS[(template, size)]
    data: dict[str, Any] = {"name": f"{template}-{size}", "arch": "decoder-only", "template": template}
    data.update(fields)
    return data


def source(template: str, size: str) -> str:
    """Where the shape comes from."""
    return MODELS[(template, size)][1]
