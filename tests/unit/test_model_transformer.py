"""The torch model: parameter count, causality, attention kernels, rotary embeddings, init."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llmctl.config.model import ModelConfig  # noqa: E402
from llmctl.errors import LlmctlError  # noqa: E402
from llmctl.model.transformer import Transformer, apply_rope, rope_frequencies  # noqa: E402
from llmctl.plan.params import count_parameters  # noqa: E402


def cfg(**kw) -> ModelConfig:
    base = {"name": "t", "layers": 2, "hidden": 32, "heads": 4, "vocab_size": 96, "max_seq_len": 32}
    return ModelConfig(**{**base, **kw})


@settings(max_examples=25, deadline=None)
@given(template=st.sampled_from(["gpt", "llama"]), layers=st.integers(1, 3), heads=st.sampled_from([1, 2, 4]),
       group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([4, 8]), ffn=st.integers(8, 40),
       vocab=st.integers(16, 100), bias=st.booleans(), tie=st.booleans(),
       norm=st.sampled_from(["layernorm", "rmsnorm"]), act=st.sampled_from(["gelu", "swiglu"]))
def test_parameter_count_equals_the_planner_formula(template, layers, heads, group, head_dim, ffn, vocab,
                                                    bias, tie, norm, act):
    kv = max(heads // group, 1)
    c = cfg(template=template, layers=layers, heads=heads, kv_heads=kv, head_dim=head_dim,
            hidden=heads * head_dim * 2, ffn=ffn, vocab_size=vocab, bias=bias, tie_embeddings=tie,
            norm=norm, activation=act)
    model = Transformer(c)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(c).total
    assert (model.head.weight is model.tok_emb.weight) == tie


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-124m"])
def test_parameter_count_of_published_shapes(name):
    shapes = {
        "llama-tiny": dict(template="llama", layers=4, hidden=128, ffn=352, heads=4, kv_heads=2, head_dim=32,
                           vocab_size=4096, max_seq_len=256, tie_embeddings=True),
        # GPT-2 small: 124,439,808 parameters with vocab 50257 (Radford et al. 2019).
        "gpt2-124m": dict(template="gpt", layers=12, hidden=768, heads=12, vocab_size=50257, max_seq_len=1024),
    }
    c = cfg(**shapes[name])
    with torch.device("meta"):
        model = Transformer.__new__(Transformer)
        Transformer.__init__(model, c)
    n = sum(p.numel() for p in model.parameters())
    assert n == count_parameters(c).total
    if name == "gpt2-124m":
        assert n == 124_439_808


@pytest.mark.parametrize("template", ["gpt", "llama"])
def test_the_model_is_causal(template):
    torch.manual_seed(0)
    model = Transformer(cfg(template=template, kv_heads=2)).eval()
    x = torch.randint(0, 96, (2, 20))
    y = x.clone()
    y[:, 12] = (y[:, 12] + 1) % 96
    a, b = model(x), model(y)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_initial_loss_is_that_of_a_uniform_guess():
    # The references' init (N(0, 0.02)) makes the untrained model predict ~uniformly.
    torch.manual_seed(0)
    c = cfg(template="llama", vocab_size=512, hidden=64)
    model = Transformer(c)
    x = torch.randint(0, 512, (4, 32))
    with torch.no_grad():
        loss = float(model(x, torch.randint(0, 512, (4, 32))))
    assert abs(loss - math.log(512)) < 0.1
    std = model.blocks[0].attn.wq.weight.std().item()
    resid = model.blocks[0].attn.wo.weight.std().item()
    assert 0.018 < std < 0.022
    assert resid < std / 1.5  # residual projections scaled by 1/sqrt(2*layers)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_sdpa_and_math_attention_agree_with_grouped_heads(kv_heads):
    torch.manual_seed(0)
    c = cfg(template="llama", kv_heads=kv_heads)
    a = Transformer(c, attention="sdpa").eval()
    b = Transformer(c, attention="math").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 96, (2, 24))
    assert torch.allclose(a(x), b(x), atol=1e-5)


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_recomputation_gives_the_same_gradients(mode):
    torch.manual_seed(0)
    c = cfg(template="llama", kv_heads=2)
    a, b = Transformer(c), Transformer(c)
    b.load_state_dict(a.state_dict())
    b.set_recompute(mode)
    x = torch.randint(0, 96, (2, 16))
    a(x, x).backward()
    b(x, x).backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_rope_depends_only_on_relative_position():
    torch.manual_seed(0)
    c = cfg(template="llama")
    from llmctl.model.transformer import rope_cache

    cos, sin = rope_cache(c, 64)
    q, k = torch.randn(8), torch.randn(8)

    def rot(v, pos):
        return apply_rope(v.view(1, 1, 1, 8), cos[pos:pos + 1], sin[pos:pos + 1]).view(8)

    d1 = torch.dot(rot(q, 10), rot(k, 3))
    d2 = torch.dot(rot(q, 40), rot(k, 33))
    assert torch.allclose(d1, d2, atol=1e-5)
    assert not torch.allclose(d1, torch.dot(rot(q, 10), rot(k, 4)), atol=1e-3)


def test_rope_scalings():
    plain, _ = rope_frequencies(cfg(template="llama", head_dim=16, heads=2), 32)
    lin, f = rope_frequencies(cfg(template="llama", head_dim=16, heads=2,
                                  rope={"scaling": "linear", "factor": 4.0}), 32)
    assert torch.allclose(lin, plain / 4) and f == 1.0  # position interpolation
    l3, _ = rope_frequencies(cfg(template="llama", head_dim=16, heads=2, max_seq_len=8192,
                                 rope={"scaling": "llama3", "factor": 8.0, "base": 500000.0}), 8192)
    p3, _ = rope_frequencies(cfg(template="llama", head_dim=16, heads=2, max_seq_len=8192,
                                 rope={"base": 500000.0}), 8192)
    assert torch.isclose(l3[0], p3[0])  # high frequencies kept
    assert torch.isclose(l3[-1], p3[-1] / 8)  # low frequencies interpolated
    y, fy = rope_frequencies(cfg(template="llama", head_dim=16, heads=2, rope={"scaling": "yarn", "factor": 4.0}), 32)
    assert fy == pytest.approx(0.1 * math.log(4) + 1)
    assert torch.all(y <= plain + 1e-12) and torch.all(y >= plain / 4 - 1e-12)
    dyn = Transformer(cfg(template="llama", rope={"scaling": "dynamic", "factor": 2.0})).eval()
    assert dyn(torch.randint(0, 96, (1, 64))).shape == (1, 64, 96)  # beyond max_seq_len, up to factor x
    with pytest.raises(ValueError, match="exceeds"):
        dyn(torch.randint(0, 96, (1, 65)))


def test_unknown_kernel_lists_the_known_ones():
    with pytest.raises(LlmctlError, match="known: math, sdpa"):
        Transformer(cfg(), attention="nope")


PLUGIN = '''
import torch.nn.functional as F
calls = []

def counting_attention(q, k, v, *, scale=None):
    calls.append(q.shape)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])

class FancyRMSNorm(__import__("torch").nn.RMSNorm):
    llmctl_kind = "norm"
    def __init__(self, dim, eps):
        super().__init__(dim, eps=eps)

def register():
    return {"counting_attention": counting_attention, "fancy": FancyRMSNorm}
'''

PROBE = '''
import json, sys, torch
import myplugin
from llmctl.config.model import ModelConfig
from llmctl.model import kernels
from llmctl.model.transformer import Transformer
c = ModelConfig(name="t", template="llama", layers=2, hidden=32, heads=4, kv_heads=2, vocab_size=50)
torch.manual_seed(0)
a = Transformer(c, attention="counting_attention", norm="fancy").eval()
b = Transformer(c).eval()
b.load_state_dict(a.state_dict())
x = torch.randint(0, 50, (1, 8))
same = torch.allclose(a(x), b(x), atol=1e-6)
print(json.dumps({"calls": len(myplugin.calls), "same": same, "available": kernels.available(),
                  "norm": type(a.norm).__name__}))
'''


def test_a_plugin_registers_kernels_through_the_entry_point(tmp_path):
    # A real installed distribution (dist-info with entry_points.txt) on sys.path.
    (tmp_path / "myplugin.py").write_text(PLUGIN)
    info = tmp_path / "myplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[llmctl.plugins]\nmine = myplugin:register\n")
    r = subprocess.run([sys.executable, "-c", PROBE], env={"PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1",
                                                          "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["calls"] == 2  # once per layer
    assert out["same"] is True
    assert "counting_attention" in out["available"]["attention"] and "fancy" in out["available"]["norm"]
    assert out["norm"] == "FancyRMSNorm"
