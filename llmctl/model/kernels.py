"""The kernel registry: attention and normalisation implementations by name.

Built in: attention `sdpa` (torch's scaled_dot_product_attention, which picks the
flash or memory-efficient kernel on a GPU) and `math` (plain softmax(QK^T)V, a
reference); norms `layernorm` and `rmsnorm`.

A plugin adds faster kernels through an entry point in the group `llmctl.plugins`
whose target is a `register()` returning {name: implementation}, e.g.

    [project.entry-points."llmctl.plugins"]
    my_kernels = "my_pkg.kernels:register"

An implementation says what it is with an attribute `llmctl_kind` ("attention" or
"norm"); without one the name decides ("attention"/"attn" or "norm" in it).
Attention is a callable `fn(q, k, v, *, scale) -> out` over (batch, heads, seq,
head_dim) tensors, causal, where k and v may have fewer (grouped) heads than q.
A norm is a class `Norm(dim, eps)` (an nn.Module) whose parameters are named like
the built-in one it replaces (`weight`, and `bias` for layernorm), so that
checkpoints load whichever kernel made them.
"""

from __future__ import annotations

from typing import Any, Callable

from llmctl.errors import LlmctlError

ENTRY_POINT_GROUP = "llmctl.plugins"
KINDS = ("attention", "norm")

_registry: dict[str, dict[str, Any]] = {"attention": {}, "norm": {}}
_sources: dict[str, str] = {}
_plugins_loaded = False


def sdpa_attention(q, k, v, *, scale=None):
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def math_attention(q, k, v, *, scale=None):
    """Reference attention in plain operations (slow; for tests and debugging)."""
    import math

    import torch

    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    att = (q @ k.transpose(-2, -1)) * scale
    t = q.shape[2]
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
    return att @ v


def _layernorm(dim: int, eps: float):
    import torch.nn as nn

    return nn.LayerNorm(dim, eps=eps)


def _rmsnorm(dim: int, eps: float):
    import torch.nn as nn

    return nn.RMSNorm(dim, eps=eps)


def _kind_of(name: str, impl: Any) -> str:
    kind = getattr(impl, "llmctl_kind", None)
    if kind is None:
        low = name.lower()
        kind = "attention" if ("attention" in low or "attn" in low) else "norm" if "norm" in low else None
    if kind not in KINDS:
        raise LlmctlError(f"kernel {name!r}: cannot tell whether it is attention or a norm",
                          hint="give the implementation an attribute llmctl_kind = 'attention' or 'norm'")
    return kind


def register(name: str, impl: Any, kind: str | None = None, source: str = "code") -> None:
    """Add (or replace) a kernel."""
    if not callable(impl):
        raise LlmctlError(f"kernel {name!r} from {source}: implementation is not callable")
    kind = kind or _kind_of(name, impl)
    _registry[kind][name] = impl
    _sources[f"{kind}:{name}"] = source


def load_plugins() -> list[str]:
    """Call every `llmctl.plugins` entry point's register() once; returns the names added."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    from importlib.metadata import entry_points

    added = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            table = ep.load()()
        except Exception as e:  # a broken plugin is the user's to fix: say which one
            raise LlmctlError(f"plugin {ep.name} ({ep.value}): register() failed: {e}") from e
        if not isinstance(table, dict):
            raise LlmctlError(f"plugin {ep.name} ({ep.value}): register() must return a dict "
                              f"of name -> implementation, got {type(table).__name__}")
        for name, impl in table.items():
            register(str(name), impl, source=f"plugin {ep.name}")
            added.append(str(name))
    return added


def get(kind: str, name: str) -> Any:
    """The implementation `name` of `kind`, loading plugins first."""
    load_plugins()
    table = _registry[kind]
    if name not in table:
        raise LlmctlError(f"no {kind} kernel {name!r}; known: {', '.join(sorted(table))}",
                          hint=f"plugins add kernels through the {ENTRY_POINT_GROUP!r} entry point group")
    return table[name]


def available() -> dict[str, list[str]]:
    load_plugins()
    return {k: sorted(v) for k, v in _registry.items()}


def _builtins() -> None:
    fns: list[tuple[str, Callable, str]] = [
        ("sdpa", sdpa_attention, "attention"), ("math", math_attention, "attention"),
        ("layernorm", _layernorm, "norm"), ("rmsnorm", _rmsnorm, "norm")]
    for name, fn, kind in fns:
        register(name, fn, kind, source="built-in")


_builtins()
