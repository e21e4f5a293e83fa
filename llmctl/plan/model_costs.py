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
ATTENTION_KERNELS = ("flash", "eager")
PRECISIONS = ("bf16", "fp8")
# FP8 delayed scaling (Transformer Engine's DelayedScaling recipe): per FP8 tensor (input,
# weight, output gradient of each GEMM) an fp32 amax history of 1024 steps, a scale and its inverse
FP8_AMAX_HISTORY = 1024
FP8_GEMMS_PER_BLOCK = 4  # QKV, projection, the MLP's first (fused gate+up) and second matrices  # fused (SDPA flash / memory-efficient) or materialised scores


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

    def linear_flops(self, s: int) -> float:
        """Forward FLOPs of one block's linear layers (QKV, projection, MLP): what
        Transformer Engine runs in FP8 (its Linear / LayerNormLinear / LayerNormMLP)."""
        return self.layer_flops(s) - self.attention_core_flops(s)

    def linear_params(self) -> int:
        """Weights of one block's linear layers (the ones FP8 casts): all but norms and biases."""
        h, a, k, d, f = self.hidden, self.heads, self.kv_heads, self.head_dim, self.ffn
        return h * (a * d + 2 * k * d) + a * d * h + (3 if self.swiglu else 2) * h * f

    def fp8_saved_bytes(self, s: int, b: int, t: int, c: int) -> float:
        """Bytes FP8 saves per block per micro-batch: the inputs the FP8 GEMMs keep for their
        weight gradient are stored in FP8 (1 byte): the QKV and MLP inputs (2sbh -> sbh each),
        the projection input (2sbad -> sbad) and the second MLP matrix's input (2sbf -> sbf)."""
        sb = s / c * b
        return (2 * sb * self.hidden + sb * self.heads * self.head_dim + sb * self.ffn) / t

    def fp8_cast_elements(self, s: int, b: int, t: int, c: int) -> float:
        """Elements cast to FP8 per block per micro-batch on one GPU: each FP8 GEMM's input in
        forward (QKV and MLP inputs gathered over the sequence-parallel group, so not /t) and
        its output gradient in backward."""
        h, a, k, d, f = self.hidden, self.heads, self.kv_heads, self.head_dim, self.ffn
        sb = s / c * b
        fwd = 2 * sb * h + sb * (a * d + f) / t
        bwd = sb * (a * d + 2 * k * d + (2 if self.swiglu else 1) * f) / t + 2 * sb * h
        return fwd + bwd

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
    def act_bytes(self, s: int, b: int, t: int, c: int, keep_core: bool, attention: str = "eager",
                  sequence_parallel: bool = True) -> float:
        """Activations one block stores for backward (tensor+sequence parallel t, context c).

        `keep_core`: the attention core's own tensors are kept (not selectively recomputed);
        `attention`: "eager" keeps the s^2 scores, "flash" the per-row log-sum-exp.
        Without sequence parallelism the norms' inputs, the GEMMs' hidden-width inputs and the
        dropout masks are whole on every tensor-parallel rank: Korthikanti eq. 2's 10sbh.
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
        if sequence_parallel:
            return (attn + mlp + norms + core) / t
        whole = 2 * BYTES * sb * h + 2 * mask * sb * h + norms
        return whole + (attn + mlp + norms + core - whole) / t

    def act_checkpoint_bytes(self, s: int, b: int, t: int, c: int, sequence_parallel: bool = True) -> float:
        """A fully recomputed block keeps only its input (2sbh; split over t with sequence parallelism)."""
        return BYTES * s / c * b * self.hidden / (t if sequence_parallel else 1)

    # --- memory-bound kernels: bytes through HBM per micro-batch on one GPU --------
    def memory_bound_bytes(self, s: int, b: int, t: int, c: int, attention: str,
                           sequence_parallel: bool = True) -> float:
        """Forward HBM bytes of one block's memory-bound kernels (backward: BWD_BYTES_RATIO of it).

        Per token, bf16: two norms (read x, write y: 4 bytes per element of h), two residual adds with
        their bias and dropout (read two, write one, a 1-byte mask with dropout: 6-7 bytes), all split
        over the tensor-parallel group only with sequence parallelism (Korthikanti et al. 2022 sec.
        4.2.2; without it every rank does all of them); the MLP's activation (GeLU: read and write
        ffn; SwiGLU: read two, write one), split over t. An eager attention also runs the fused
        scale-mask-softmax (read, write) and dropout (read, write, mask) over its a/t x s x s scores;
        a fused kernel keeps them on chip.
        """
        h, a, f = self.hidden, self.heads, self.ffn
        sl = s / c
        sb = sl * b
        drop = 1 if self.dropout else 0
        hidden = sb * h * (2 * 2 * BYTES + 2 * (3 * BYTES + drop)) / (t if sequence_parallel else 1)
        act = sb * f * BYTES * (3 if self.swiglu else 2) / t
        score = self.heads / t * sl * s * b * (2 * BYTES + (2 * BYTES + 1) * drop) if attention == "eager" else 0.0
        del a
        return hidden + act + score

    def logits_memory_bytes(self, s: int, b: int, t: int, c: int) -> float:
        """HBM bytes of the cross-entropy over the vocabulary-parallel logits, forward and backward:
        the cast to fp32 (read 2, write 4), max and sum of exponentials (read 4 twice, write 4), the
        gradient (read 4, write 2): 24 bytes per logit (Megatron's vocab-parallel cross-entropy)."""
        return 24.0 * s / c * b * self.vocab / t

    def logits_bytes(self, s: int, b: int, t: int, c: int) -> float:
        """fp32 logits for the cross-entropy on the last stage (vocab split over t)."""
        return 4 * s / c * b * self.vocab / t
