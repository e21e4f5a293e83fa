"""Model config: the architecture of a decoder-only transformer (a JSON file).

The seed's fields (`name, arch, layers, hidden, ffn, heads, vocab_size, rope`) plus
what a real architecture needs to be exact: `kv_heads` (grouped-query attention),
`head_dim`, `max_seq_len`, `norm`, `activation`, `bias`, `tie_embeddings` and the
`template` (gpt or llama) whose defaults fill whatever is not given.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from llmctl.config.base import Name, StrictModel

# Upper bounds on sizes, far above any published model, so that a typo (or `1e30`)
# is refused here rather than reaching the planner. The largest published dense
# models: Llama 3.1 405B (126 layers, width 16384, ffn 53248, 128 heads, 128k
# context), PaLM 540B (118 layers, width 18432, 48 heads, head_dim 256), Megatron's
# 1T (128 layers, width 25600, 160 heads); vocabularies reach 256k (Gemma) and
# contexts 10M tokens (Llama 4 Scout).
MAX_LAYERS = 10_000
MAX_HIDDEN = 2**20          # 1,048,576: 40x the widest
MAX_FFN = 2**22             # 4,194,304: 4x MAX_HIDDEN, the gelu default at the largest width
MAX_HEADS = 2**14           # 16,384 (also kv_heads and head_dim)
MAX_VOCAB = 2**24           # 16,777,216: 64x the largest vocabulary
MAX_SEQ_LEN = 2**27         # 134,217,728: 13x the longest context

# Defaults each template implies, following the reference implementations:
# GPT-2/3 (learned positions, LayerNorm, GELU, biases, tied head) and
# Llama (RoPE, RMSNorm, SwiGLU, no biases, untied head).
TEMPLATE_DEFAULTS = {
    "gpt": {"norm": "layernorm", "activation": "gelu", "bias": True, "tie_embeddings": True,
            "position": "learned"},
    "llama": {"norm": "rmsnorm", "activation": "swiglu", "bias": False, "tie_embeddings": False,
              "position": "rope"},
}


class RopeConfig(StrictModel):
    """Rotary position embedding (llama template)."""

    base: float = Field(10000.0, gt=0)
    """Base of the rotary frequencies (theta)."""
    scaling: Literal["none", "linear", "dynamic", "yarn", "llama3"] = "none"
    """How positions beyond the trained context are scaled."""
    factor: float = Field(1.0, ge=1.0)
    """Scaling factor for context extension (1.0 = no extension)."""
    original_max_seq_len: Optional[int] = Field(None, gt=0, le=MAX_SEQ_LEN)
    """Context the frequencies were trained at before scaling (llama3, yarn). When set, as in
    Hugging Face configs, `max_seq_len` is the extended context; when not, it is the
    original and the scaled table covers max_seq_len·factor."""
    low_freq_factor: Optional[float] = Field(None, gt=0)
    """llama3: wavelengths above original/low_freq_factor are interpolated (default 1)."""
    high_freq_factor: Optional[float] = Field(None, gt=0)
    """llama3: wavelengths below original/high_freq_factor are kept (default 4)."""
    beta_fast: Optional[float] = Field(None, gt=0)
    """yarn: rotations above which dimensions are extrapolated (default 32)."""
    beta_slow: Optional[float] = Field(None, gt=0)
    """yarn: rotations below which dimensions are interpolated (default 1)."""
    attention_factor: Optional[float] = Field(None, gt=0)
    """yarn: scale of cos/sin (default 0.1·ln(factor) + 1)."""
    truncate: Optional[bool] = None
    """yarn: round the ramp's bounds to whole dimensions (default true)."""


class ModelConfig(StrictModel):
    """A decoder-only transformer architecture."""

    name: Name = Field(min_length=1)
    """Model name, e.g. `llama-7b`: printable text, no control or bidi characters, at most 200 characters."""
    arch: Literal["decoder-only"] = "decoder-only"
    """Architecture family; only decoder-only transformers are supported."""
    template: Optional[Literal["gpt", "llama"]] = None
    """gpt (learned positions, LayerNorm, GELU) or llama (RoPE, RMSNorm, SwiGLU, GQA).
    When omitted: llama if `rope` is given, gpt otherwise."""
    layers: int = Field(gt=0, le=MAX_LAYERS)
    """Number of transformer blocks (at most 10,000)."""
    hidden: int = Field(gt=0, le=MAX_HIDDEN)
    """Model (residual stream) width (at most 2^20)."""
    ffn: Optional[int] = Field(None, gt=0, le=MAX_FFN)
    """Feed-forward inner width. Default: 4×hidden for gelu; for swiglu, 8/3×hidden
    rounded up to a multiple of 256 (as in Llama). At most 2^22."""
    heads: int = Field(gt=0, le=MAX_HEADS)
    """Attention (query) heads (at most 2^14)."""
    kv_heads: Optional[int] = Field(None, gt=0, le=MAX_HEADS)
    """Key/value heads for grouped-query attention (default: `heads`, i.e. multi-head; at most 2^14)."""
    head_dim: Optional[int] = Field(None, gt=0, le=MAX_HEADS)
    """Width of one attention head (default: hidden / heads; at most 2^14)."""
    vocab_size: int = Field(gt=0, le=MAX_VOCAB)
    """Vocabulary size (rows of the embedding table; at most 2^24)."""
    max_seq_len: int = Field(2048, gt=0, le=MAX_SEQ_LEN)
    """Longest sequence the model is trained for (learned position table size for gpt; at most 2^27)."""
    rope: Optional[RopeConfig] = None
    """Rotary embedding settings (llama template; default base 10000, no scaling)."""
    norm: Optional[Literal["layernorm", "rmsnorm"]] = None
    """Normalisation layer (default from the template)."""
    norm_eps: float = Field(1e-5, gt=0)
    """Epsilon of the normalisation layers."""
    activation: Optional[Literal["gelu", "swiglu"]] = None
    """Feed-forward activation (default from the template)."""
    bias: Optional[bool] = None
    """Biases in linear layers (default: true for gpt, false for llama)."""
    tie_embeddings: Optional[bool] = None
    """Share the input embedding with the output head (default: true for gpt, false for llama)."""
    attn_bias: Optional[bool] = None
    """Biases on the attention projections q, k, v and o (default: `bias`)."""
    qkv_bias: Optional[bool] = None
    """Biases on q, k and v only, o following `attn_bias` (Qwen2: true; default: `attn_bias`)."""
    mlp_bias: Optional[bool] = None
    """Biases on the feed-forward projections (default: `bias`)."""
    hidden_act: Optional[Literal["gelu_tanh", "gelu", "relu", "silu", "quick_gelu"]] = None
    """The feed-forward nonlinearity (default: gelu_tanh for gelu, silu for swiglu, whose gate
    it then is: gelu here makes GeGLU)."""
    attn_layer_scale: Optional[bool] = None
    """Divide block i's attention scores also by i+1 (GPT-2's scale_attn_by_inverse_layer_idx)."""

    @model_validator(mode="after")
    def _fill_and_check(self) -> "ModelConfig":
        if self.template is None:
            self.template = "llama" if self.rope is not None else "gpt"
        defaults = TEMPLATE_DEFAULTS[self.template]
        for key in ("norm", "activation", "bias", "tie_embeddings"):
            if getattr(self, key) is None:
                setattr(self, key, defaults[key])
        if self.template == "llama" and self.rope is None:
            self.rope = RopeConfig()
        if self.template == "gpt" and self.rope is not None:
            raise ValueError("rope: the gpt template uses learned positions; drop `rope` or use template = 'llama'")
        if self.kv_heads is None:
            self.kv_heads = self.heads
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.head_dim is None:
            if self.hidden % self.heads:
                raise ValueError(
                    f"hidden ({self.hidden}) is not divisible by heads ({self.heads}); set head_dim explicitly")
            self.head_dim = self.hidden // self.heads
        if self.ffn is None:
            if self.activation == "swiglu":
                self.ffn = 256 * -(-(8 * self.hidden // 3) // 256)
            else:
                self.ffn = 4 * self.hidden
        return self

    @property
    def bias_o(self) -> bool:
        return bool(self.bias if self.attn_bias is None else self.attn_bias)

    @property
    def bias_qkv(self) -> bool:
        return self.bias_o if self.qkv_bias is None else bool(self.qkv_bias)

    @property
    def bias_mlp(self) -> bool:
        return bool(self.bias if self.mlp_bias is None else self.mlp_bias)

    @property
    def act(self) -> str:
        """The feed-forward nonlinearity, defaults applied."""
        return self.hidden_act or ("silu" if self.activation == "swiglu" else "gelu_tanh")

    @property
    def position(self) -> str:
        """'learned' or 'rope'."""
        return TEMPLATE_DEFAULTS[self.template]["position"]
