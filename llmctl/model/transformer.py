"""One decoder-only transformer for both templates, driven by a ModelConfig.

gpt (Radford et al. 2019; Brown et al. 2020): learned positions, LayerNorm,
GELU (tanh approximation, as GPT-2), biases. llama (Touvron et al. 2023): rotary
positions (Su et al. 2021) with optional context scaling, RMSNorm, SwiGLU
(Shazeer 2020), grouped-query attention (Ainslie et al. 2023), no biases.
Attention goes through the kernel registry (`sdpa` by default, i.e. flash
attention on a GPU). Initialisation follows GPT-2 / nanoGPT: N(0, 0.02), and the
residual output projections N(0, 0.02/sqrt(2·layers)) so that the residual
stream's variance does not grow with depth.

No parallelism here: DDP/FSDP/TP/PP wrap or split this module from outside (the
blocks are a ModuleList, each linear layer its own module, so a tensor-parallel
plan can name wq/wk/wv/wo and gate/up/down). Parameter names are the contract
with checkpoints and with `llmctl.plan.params.count_parameters`, which the sum of
`numel()` equals.

    from llmctl.model.transformer import Transformer
    model = Transformer(cfg)            # cfg: llmctl.config.model.ModelConfig
    loss = model(tokens, targets)       # tokens, targets: (batch, seq) int64
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llmctl.model import kernels

INIT_STD = 0.02


# --- rotary embeddings ---------------------------------------------------------

def rope_frequencies(cfg, seq_len: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies for `cfg`'s rotary embedding, and the attention factor.

    The original context is `rope.original_max_seq_len` (Hugging Face's
    original_max_position_embeddings) when given, else `max_seq_len`. `rope.scaling`
    with `rope.factor` stretches it: linear (Chen et al. 2023, position
    interpolation), dynamic (NTK-aware base change once a sequence is longer than
    max_seq_len), llama3 (Meta's frequency-dependent interpolation between the
    low/high frequency factors, 1 and 4 by default), yarn (Peng et al. 2023:
    interpolate low frequencies only, ramp between beta_fast and beta_slow
    rotations, attention factor 0.1·ln(factor)+1 unless given). The same formulas
    as transformers' modeling_rope_utils, so imported models match it.
    """
    r = cfg.rope
    d = cfg.head_dim
    base = r.base
    orig = r.original_max_seq_len or cfg.max_seq_len
    if r.scaling == "dynamic" and seq_len > cfg.max_seq_len:
        base = base * ((r.factor * seq_len / cfg.max_seq_len) - (r.factor - 1)) ** (d / (d - 2))
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    attn_factor = 1.0
    if r.scaling == "linear":
        inv = inv / r.factor
    elif r.scaling == "llama3":
        low, high = r.low_freq_factor or 1.0, r.high_freq_factor or 4.0
        low_wl, high_wl = orig / low, orig / high
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - low) / (high - low)
        mid = (1 - smooth) * inv / r.factor + smooth * inv
        inv = torch.where(wavelen > low_wl, inv / r.factor, torch.where(wavelen < high_wl, inv, mid))
    elif r.scaling == "yarn":
        def dim_for(rotations: float) -> float:
            return d * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))
        lo, hi = dim_for(r.beta_fast or 32.0), dim_for(r.beta_slow or 1.0)
        if r.truncate is not False:
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, d - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
        inv = (inv / r.factor) * ramp + inv * (1 - ramp)
        if r.attention_factor is not None:
            attn_factor = r.attention_factor
        elif r.factor > 1:
            attn_factor = 0.1 * math.log(r.factor) + 1.0
    return inv.float(), attn_factor


def rope_length(cfg) -> int:
    """Positions the model's cos/sin table covers (the longest sequence it takes, but for
    dynamic scaling, whose longer inputs get a table of their own)."""
    r = cfg.rope
    if r.scaling in ("none", "dynamic") or r.original_max_seq_len is not None:
        return cfg.max_seq_len
    return cfg.max_seq_len * int(math.ceil(r.factor))


def rope_cache(cfg, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, (seq_len, head_dim), in the rotate-half layout of Llama."""
    inv, factor = rope_frequencies(cfg, seq_len)
    t = torch.arange(seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * factor, emb.sin() * factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, seq, head_dim) by position; computed in fp32."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that count: -100 marks one that does
    not (a prompt token in chat fine-tuning). 0, not NaN, when none counts."""
    flat = targets.reshape(-1)
    total = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), flat, ignore_index=-100,
                            reduction="sum")
    return total / (flat != -100).sum().clamp(min=1)


# --- layers --------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, cfg, attn_fn, index: int = 0):
        super().__init__()
        h, d, b = cfg.hidden, cfg.head_dim, cfg.bias_qkv
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, d
        self.wq = nn.Linear(h, cfg.heads * d, bias=b)
        self.wk = nn.Linear(h, cfg.kv_heads * d, bias=b)
        self.wv = nn.Linear(h, cfg.kv_heads * d, bias=b)
        self.wo = nn.Linear(cfg.heads * d, h, bias=cfg.bias_o)
        # None: the kernel's 1/sqrt(head_dim); GPT-2's scale_attn_by_inverse_layer_idx also
        # divides block i's scores by i+1.
        self.scale = 1.0 / math.sqrt(d) / (index + 1) if cfg.attn_layer_scale else None
        self.attn_fn = attn_fn if self.scale is None else (lambda q, k, v: attn_fn(q, k, v, scale=self.scale))
        self.recompute_core = False
        self.fused_qkv = False

    def qkv(self, x):
        """q, k, v projections of (…, hidden) inputs, (…, heads·head_dim) and twice (…, kv_heads·head_dim).

        Fused (`set_fused_qkv`): one GEMM over the three weights stacked row-wise, its output
        split at the GQA boundaries. The parameters stay wq/wk/wv, so checkpoints, optimizer
        state, exports and serving see the same names either way; the stacking is one copy
        of the three weights per call, small beside the GEMM over batch·seq rows (and folded
        into the bf16 cast under autocast+torch.compile)."""
        if not self.fused_qkv:
            return self.wq(x), self.wk(x), self.wv(x)
        w = torch.cat([self.wq.weight, self.wk.weight, self.wv.weight])
        b = (torch.cat([self.wq.bias, self.wk.bias, self.wv.bias]) if self.wq.bias is not None else None)
        q_dim, kv_dim = self.wq.out_features, self.wk.out_features
        return F.linear(x, w, b).split([q_dim, kv_dim, kv_dim], dim=-1)

    def forward(self, x, cos=None, sin=None):
        bsz, t, _ = x.shape
        q, k, v = self.qkv(x)
        q = q.reshape(bsz, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(bsz, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(bsz, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.recompute_core and self.training:
            # Selective recomputation (Korthikanti et al. 2022): keep the projections,
            # recompute the attention core, whose activations grow with seq².
            y = checkpoint(self.attn_fn, q, k, v, use_reentrant=False)
        else:
            y = self.attn_fn(q, k, v)
        return self.wo(y.transpose(1, 2).reshape(bsz, t, self.heads * self.head_dim))


ACTIVATIONS = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, f, b = cfg.hidden, cfg.ffn, cfg.bias_mlp
        self.act = ACTIVATIONS[cfg.act]
        self.swiglu = cfg.activation == "swiglu"
        if self.swiglu:
            self.gate = nn.Linear(h, f, bias=b)
            self.up = nn.Linear(h, f, bias=b)
            self.down = nn.Linear(f, h, bias=b)
        else:
            self.fc = nn.Linear(h, f, bias=b)
            self.proj = nn.Linear(f, h, bias=b)

    def forward(self, x):
        if self.swiglu:  # gated (SwiGLU with silu, GeGLU with gelu)
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg, attn_fn, norm_cls, index: int = 0):
        super().__init__()
        self.norm1 = norm_cls(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg, attn_fn, index)
        self.norm2 = norm_cls(cfg.hidden, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.recompute = False

    def _forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))

    def forward(self, x, cos=None, sin=None):
        if self.recompute and self.training:
            return checkpoint(self._forward, x, cos, sin, use_reentrant=False)
        return self._forward(x, cos, sin)


class Transformer(nn.Module):
    """A decoder-only language model; `forward(tokens, targets)` returns the mean loss."""

    def __init__(self, cfg, attention: str = "sdpa", norm: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        attn_fn = kernels.get("attention", attention)
        norm_cls = kernels.get("norm", norm or cfg.norm)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.hidden) if cfg.position == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, attn_fn, norm_cls, i) for i in range(cfg.layers))
        self.norm = norm_cls(cfg.hidden, cfg.norm_eps)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        if cfg.position == "rope":
            # Static scalings stretch the table to max_seq_len·factor; dynamic changes the
            # base only for longer sequences, so its table covers max_seq_len and longer
            # inputs get a table of their own in forward().
            cos, sin = rope_cache(cfg, rope_length(cfg))
            # Not persistent: recomputed from the config, so checkpoints hold weights only.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.rope_cos = self.rope_sin = None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter; also callable after materialising on another device."""
        resid_std = INIT_STD / math.sqrt(2 * self.cfg.layers)
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                std = resid_std if name.endswith((".wo", ".proj", ".down")) else INIT_STD
                nn.init.normal_(mod.weight, mean=0.0, std=std)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, mean=0.0, std=INIT_STD)
            elif hasattr(mod, "reset_parameters") and not list(mod.children()) and mod is not self:
                mod.reset_parameters()  # norms: weight 1, bias 0
        if self.cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def set_recompute(self, mode: str, layers: Optional[int] = None) -> None:
        """Activation recomputation: 'none', 'selective' (attention core) or 'full' (whole blocks).

        `layers` limits full recomputation to the first N blocks (the plan may
        recompute only some layers of a stage).
        """
        n = len(self.blocks) if layers is None else layers
        for i, blk in enumerate(self.blocks):
            blk.recompute = mode == "full" and i < n
            blk.attn.recompute_core = mode == "selective"

    def set_fused_qkv(self, on: bool = True) -> None:
        """One GEMM for each block's q, k and v projections instead of three (`kernels.fused_qkv`).

        The same parameters (wq/wk/wv), the same outputs up to float rounding. Not under
        tensor parallelism, whose plan shards wq/wk/wv as separate modules (the trainer
        refuses that mix)."""
        for blk in self.blocks:
            blk.attn.fused_qkv = on

    def forward(self, tokens: torch.Tensor, targets: Optional[torch.Tensor] = None):
        t = tokens.shape[1]
        limit = self.pos_emb.num_embeddings if self.pos_emb is not None else self.rope_cos.shape[0]
        dynamic = self.pos_emb is None and self.cfg.rope.scaling == "dynamic"
        if dynamic:
            limit = int(self.cfg.max_seq_len * self.cfg.rope.factor)
        if t > limit:
            raise ValueError(f"sequence of {t} tokens exceeds the model's {limit} positions")
        x = self.tok_emb(tokens)
        cos = sin = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(t, device=tokens.device))
        elif t > self.rope_cos.shape[0]:
            cos, sin = (c.to(tokens.device) for c in rope_cache(self.cfg, t))
        else:
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for blk in self.blocks:
            x = blk(x, cos, sin)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        return lm_loss(logits, targets)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())
