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

    `max_seq_len` is the context the model is trained at; `rope.scaling` with
    `rope.factor` stretches it to max_seq_len·factor: linear (Chen et al. 2023,
    position interpolation), dynamic (NTK-aware base change once a sequence is
    longer than max_seq_len), llama3 (Meta's frequency-dependent interpolation,
    low/high frequency factors 1 and 4), yarn (Peng et al. 2023: interpolate low
    frequencies only, ramp between 32 and 1 rotations, attention factor
    0.1·ln(factor)+1).
    """
    r = cfg.rope
    d = cfg.head_dim
    base = r.base
    orig = cfg.max_seq_len
    if r.scaling == "dynamic" and seq_len > orig:
        base = base * ((r.factor * seq_len / orig) - (r.factor - 1)) ** (d / (d - 2))
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    attn_factor = 1.0
    if r.scaling == "linear":
        inv = inv / r.factor
    elif r.scaling == "llama3":
        low_wl, high_wl = orig / 1.0, orig / 4.0
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - 1.0) / (4.0 - 1.0)
        mid = (1 - smooth) * inv / r.factor + smooth * inv
        inv = torch.where(wavelen > low_wl, inv / r.factor, torch.where(wavelen < high_wl, inv, mid))
    elif r.scaling == "yarn" and r.factor > 1:
        def dim_for(rotations: float) -> float:
            return d * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(r.base))
        lo = max(math.floor(dim_for(32.0)), 0)
        hi = min(math.ceil(dim_for(1.0)), d - 1)
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - lo) / max(hi - lo, 1e-3)).clamp(0, 1)
        inv = (inv / r.factor) * ramp + inv * (1 - ramp)
        attn_factor = 0.1 * math.log(r.factor) + 1.0
    return inv.float(), attn_factor


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


# --- layers --------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, cfg, attn_fn):
        super().__init__()
        h, d, b = cfg.hidden, cfg.head_dim, bool(cfg.bias)
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, d
        self.wq = nn.Linear(h, cfg.heads * d, bias=b)
        self.wk = nn.Linear(h, cfg.kv_heads * d, bias=b)
        self.wv = nn.Linear(h, cfg.kv_heads * d, bias=b)
        self.wo = nn.Linear(cfg.heads * d, h, bias=b)
        self.attn_fn = attn_fn
        self.recompute_core = False

    def forward(self, x, cos=None, sin=None):
        bsz, t, _ = x.shape
        q = self.wq(x).view(bsz, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(bsz, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(bsz, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.recompute_core and self.training:
            # Selective recomputation (Korthikanti et al. 2022): keep the projections,
            # recompute the attention core, whose activations grow with seq².
            y = checkpoint(self.attn_fn, q, k, v, use_reentrant=False)
        else:
            y = self.attn_fn(q, k, v)
        return self.wo(y.transpose(1, 2).reshape(bsz, t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, f, b = cfg.hidden, cfg.ffn, bool(cfg.bias)
        self.swiglu = cfg.activation == "swiglu"
        if self.swiglu:
            self.gate = nn.Linear(h, f, bias=b)
            self.up = nn.Linear(h, f, bias=b)
            self.down = nn.Linear(f, h, bias=b)
        else:
            self.fc = nn.Linear(h, f, bias=b)
            self.proj = nn.Linear(f, h, bias=b)

    def forward(self, x):
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg, attn_fn, norm_cls):
        super().__init__()
        self.norm1 = norm_cls(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg, attn_fn)
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
        self.blocks = nn.ModuleList(Block(cfg, attn_fn, norm_cls) for _ in range(cfg.layers))
        self.norm = norm_cls(cfg.hidden, cfg.norm_eps)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        if cfg.position == "rope":
            # Static scalings stretch the table to max_seq_len·factor; dynamic changes the
            # base only for longer sequences, so its table covers max_seq_len and longer
            # inputs get a table of their own in forward().
            stretch = cfg.rope.scaling not in ("none", "dynamic")
            length = cfg.max_seq_len * (int(math.ceil(cfg.rope.factor)) if stretch else 1)
            cos, sin = rope_cache(cfg, length)
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
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    def num_parameters(self) -> int:
        """Distinct parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())
