"""Model config: the architecture of a decoder-only transformer (a JSON file).

The seed's fields (`name, arch, layers, hidden, ffn, heads, vocab_size, rope`) plus
what a real architecture needs to be exact: `kv_heads` (grouped-query attention),
`head_dim`, `max_seq_len`, `norm`, `activation`, `bias`, `tie_embeddings` and the
`template` (gpt or llama) whose defaults fill whatever is not given.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from llmctl.config.base import StrictModel

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


class ModelConfig(StrictModel):
    """A decoder-only transformer architecture."""

    name: str = Field(min_length=1)
    """Model name, e.g. `llama-7b`."""
    arch: Literal["decoder-only"] = "decoder-only"
    """Architecture family; only decoder-only transformers are supported."""
    template: Optional[Literal["gpt", "llama"]] = None
    """gpt (learned positions, LayerNorm, GELU) or llama (RoPE, RMSNorm, SwiGLU, GQA).
    When omitted: llama if `rope` is given, gpt otherwise."""
    layers: int = Field(gt=0)
    """Number of transformer blocks."""
    hidden: int = Field(gt=0)
    """Model (residual stream) width."""
    ffn: Optional[int] = Field(None, gt=0)
    """Feed-forward inner width. Default: 4×hidden for gelu; for swiglu, 8/3×hidden
    rounded up to a multiple of 256 (as in Llama)."""
    heads: int = Field(gt=0)
    """Attention (query) heads."""
    kv_heads: Optional[int] = Field(None, gt=0)
    """Key/value heads for grouped-query attention (default: `heads`, i.e. multi-head)."""
    head_dim: Optional[int] = Field(None, gt=0)
    """Width of one attention head (default: hidden / heads)."""
    vocab_size: int = Field(gt=0)
    """Vocabulary size (rows of the embedding table)."""
    max_seq_len: int = Field(2048, gt=0)
    """Longest sequence the model is trained for (learned position table size for gpt)."""
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
    def position(self) -> str:
        """'learned' or 'rope'."""
        return TEMPLATE_DEFAULTS[self.template]["position"]

    def num_parameters(self) -> int:
        """Exact parameter count (see llmctl.plan.params)."""
        from llmctl.plan.params import count_parameters

        return count_parameters(self).total
