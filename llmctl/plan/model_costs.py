"""Per-layer quantities of the cost model: FLOPs, activation bytes, parameters.

Sources (docs/planner.md has the derivations):
- FLOPs: Narayanan et al. 2021 sec. 5.1 / Korthikanti et al. 2022 sec. 6 count
  2 FLOPs per multiply-add; forward = 1x, backward = 2x, full recomputation adds
  one more forward. Written per matrix so GQA (k < a KV heads) and SwiGLU (three
  h x ffn matrices) fall out instead of the 24sh^2 + 4s^2h shortcut.
- Activations: Korthikanti et al. 2022 eq. 1-2 (sbh(34 + 5as/h) bytes per layer,
  divided by t with tensor + sequence parallelism, 2sbh with full recomputation),
  rebuilt term by term so GQA shrinks K and V, SwiGLU stores three ffn-wide
  tensors, and Llama (no dropout) stores no dropout masks. The 5as^2b of the
  attention scores is what an attention that materialises softmax(QK^T) keeps
  ("eager"); a fused kernel (FlashAttention, Dao et al. 2022 sec. 3.1; PyTorch's
  SDPA flash / memory-efficient backends, which llmctl's trainer uses) keeps only
  the fp32 log-sum-exp of each row, 4asb bytes, and recomputes the scores in backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.config.model import ModelConfig
from llmctl.plan.params import count_parameters

BYTES = 2  # bf16 activations and weights
ATTENTION_KERNELS = ("flash", "eager")  # fused (SDPA flash / memory-efficient) or materialised scores


@dataclass(frozen=True)
class LayerShape:
    """The numbers of one transformer block the cost model needs."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    swiglu: bool
    dropout: bool  # gpt template trains with dropout (masks are stored); llama does not
    params_layer: int
    params_first: int  # embedding (+ learned positions) on the first stage
    params_last: int  # output head (or the tied copy Megatron keeps) + final norm
    params_total: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> "LayerShape":
        pc = count_parameters(cfg)
        return cls(layers=cfg.layers, hidden=cfg.hidden, heads=cfg.heads, kv_heads=cfg.kv_heads,
                   head_dim=cfg.head_dim, ffn=cfg.ffn, vocab=cfg.vocab_size,
                   swiglu=cfg.activation == "swiglu", dropout=cfg.template == "gpt",
                   params_layer=pc.per_layer, params_first=pc.embedding + pc.position,
                   params_last=(pc.head or pc.embedding) + pc.final_norm, params_total=pc.total)

    # --- FLOPs per sequence of length s (forward pass) -------------------------
    def layer_flops(self, s: int) -> float:
        """Forward FLOPs of one block for one sequence."""
        h, a, k, d, f = self.hidden, self.heads, self.kv_heads, self.head_dim, self.ffn
        qkv = 2 * s * h * (a * d + 2 * k * d)
        core = self.attention_core_flops(s)
        proj = 2 * s * a * d * h
        mlp = (3 if self.swiglu else 2) * 2 * s * h * f
        return float(qkv + core + proj + mlp)

    def attention_core_flops(self, s: int) -> float:
        """QK^T and softmax(.)V: the part selective recomputation recomputes."""
        return float(2 * 2 * s * s * self.heads * self.head_dim)

    def head_flops(self, s: int) -> float:
        """Forward FLOPs of the output projection (logits) for one sequence."""
        return float(2 * s * self.hidden * self.vocab)

    def model_flops(self, s: int) -> float:
        """Model FLOPs per sequence for one training step: 3x forward (Korthikanti's MFU)."""
        return 3 * (self.layers * self.layer_flops(s) + self.head_flops(s))

    # --- activation bytes per layer per micro-batch ----------------------------
    def act_bytes(self, s: int, b: int, t: int, c: int, keep_core: bool, attention: str = "eager") -> float:
        """Activations one block stores for backward (tensor+sequence parallel t, context c).

        `keep_core`: the attention core's own tensors are kept (not selectively recomputed);
        `attention`: "eager" keeps the s^2 scores, "flash" the per-row log-sum-exp.
        """
        h, a, k, d, f = self.hidden, self.heads, self.kv_heads, self.head_dim, self.ffn
        sl = s / c  # context parallelism splits the sequence
        sb = sl * b
        mask = 1 if self.dropout else 0
        attn = BYTES * sb * h + BYTES * sb * a * d + 2 * BYTES * sb * k * d + BYTES * sb * a * d + mask * sb * h
        mlp = BYTES * sb * h + (3 if self.swiglu else 2) * BYTES * sb * f + mask * sb * h
        norms = 2 * BYTES * sb * h
        core = 0.0
        if keep_core and attention == "flash":  # fp32 log-sum-exp per head and query row
            core = 4 * a * sl * b
        elif keep_core:  # softmax output (+ dropout mask and output): 5as^2b, or 2as^2b without dropout
            core = (5 if self.dropout else 2) * a * sl * s * b
        return (attn + mlp + norms + core) / t

    def act_checkpoint_bytes(self, s: int, b: int, t: int, c: int) -> float:
        """A fully recomputed block keeps only its input (2sbh, sequence-parallel)."""
        return BYTES * s / c * b * self.hidden / t

    def logits_bytes(self, s: int, b: int, t: int, c: int) -> float:
        """fp32 logits for the cross-entropy on the last stage (vocab split over t)."""
        return 4 * s / c * b * self.vocab / t
