"""Exact parameter counts for the gpt and llama templates.

One function, used by `init scaffold` (to report sizes), the planner (weights,
gradients and optimizer memory) and the torch model's own test (its
`sum(p.numel())` must equal this).

gpt follows GPT-2/3: learned positions, LayerNorm (weight + bias), GELU MLP of
width `ffn`, biases on every linear layer. With ffn = 4h and no GQA this is
Narayanan et al. 2021 eq. 2, P = 12·l·h²·(1 + 13/(12h) + (V+s)/(12·l·h)), plus the
final LayerNorm's 2h.

llama follows Touvron et al. 2023: RoPE (no position parameters), RMSNorm (weight
only), SwiGLU MLP (three matrices h×ffn), grouped-query attention with
`kv_heads` key/value heads, no biases, untied output head unless configured.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.config.model import ModelConfig


@dataclass(frozen=True)
class ParamCount:
    """Parameters by part; `total` counts a tied head once."""

    embedding: int
    position: int
    per_layer: int
    layers: int
    final_norm: int
    head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.position + self.per_layer * self.layers + self.final_norm + self.head


def layer_parameters(cfg: ModelConfig) -> int:
    """Parameters in one transformer block."""
    h, d = cfg.hidden, cfg.head_dim
    q_out = cfg.heads * d
    kv_out = cfg.kv_heads * d
    # biases: every linear layer (`bias`), or per part (Llama's attention/mlp bias, Qwen2's q/k/v)
    bqkv, bo, b = int(cfg.bias_qkv), int(cfg.bias_o), int(cfg.bias_mlp)
    attn = h * q_out + 2 * h * kv_out + q_out * h  # Wq, Wk, Wv, Wo
    attn += bqkv * (q_out + 2 * kv_out) + bo * h
    if cfg.activation == "swiglu":
        mlp = 3 * h * cfg.ffn + b * (2 * cfg.ffn + h)  # gate, up, down
    else:
        mlp = 2 * h * cfg.ffn + b * (cfg.ffn + h)
    norm = 2 * h if cfg.norm == "layernorm" else h  # weight (+ bias)
    return attn + mlp + 2 * norm


def count_parameters(cfg: ModelConfig) -> ParamCount:
    """Count every parameter of `cfg`'s model."""
    h = cfg.hidden
    final_norm = 2 * h if cfg.norm == "layernorm" else h
    return ParamCount(
        embedding=cfg.vocab_size * h,
        position=cfg.max_seq_len * h if cfg.position == "learned" else 0,
        per_layer=layer_parameters(cfg),
        layers=cfg.layers,
        final_norm=final_norm,
        head=0 if cfg.tie_embeddings else cfg.vocab_size * h,
    )


def human_count(n: int) -> str:
    """6738415616 -> '6.74B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
