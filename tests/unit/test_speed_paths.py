"""The training speed switches on CPU (llmctl.train.speed): fused QKV gives the unfused
model's outputs and gradients from the same weights under the same names; torch.compile
runs a few real steps whose losses follow eager; each switch is honoured or refused."""

from __future__ import annotations

import pytest

import trainkit as T

torch = pytest.importorskip("torch")

GQA = dict(T.TINY_MODEL, tie_embeddings=False)  # 4 query heads over 2 kv heads
GPT_BIAS = dict(T.TINY_GPT)  # biases on q, k, v


def _pair(spec):
    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer

    torch.manual_seed(0)
    plain = Transformer(ModelConfig(**spec))
    fused = Transformer(ModelConfig(**spec))
    fused.load_state_dict(plain.state_dict())
    fused.set_fused_qkv(True)
    return plain, fused


@pytest.mark.parametrize("spec", [GQA, GPT_BIAS], ids=["llama-gqa", "gpt-bias"])
def test_fused_qkv_matches_unfused(spec):
    plain, fused = _pair(spec)
    # the contract with checkpoints, exports and serving: the very same names and shapes
    assert {k: v.shape for k, v in fused.state_dict().items()} == \
           {k: v.shape for k, v in plain.state_dict().items()}
    assert any(k.endswith("attn.wq.weight") for k in fused.state_dict())
    x = torch.randint(0, spec["vocab_size"], (3, 24))
    y = torch.randint(0, spec["vocab_size"], (3, 24))
    with torch.no_grad():
        a, b = plain(x), fused(x)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    plain(x, y).backward()
    fused(x, y).backward()
    grads = dict(fused.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-6, rtol=1e-4), name
    # the switch really changes the path: one GEMM (F.linear) per block instead of three
    calls = []
    hook = fused.blocks[0].attn.wq.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        fused(x)
    hook.remove()
    assert calls == []


def test_fused_qkv_loads_a_plain_checkpoint_and_back(tmp_path):
    from safetensors.torch import load_model, save_model

    plain, fused = _pair(GQA)
    save_model(fused, str(tmp_path / "f.safetensors"))  # what a fused run writes
    again, _ = _pair(GQA)
    with torch.no_grad():
        for p in again.parameters():
            p.zero_()
    load_model(again, str(tmp_path / "f.safetensors"))  # an unfused reader (export, serve)
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert torch.allclose(again(x), fused(x), atol=1e-5)


def test_compile_on_cpu_follows_eager():
    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer
    from llmctl.train.speed import make_step

    dev = torch.device("cpu")
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(3)
        model = Transformer(ModelConfig(**GQA))
        model.set_fused_qkv(compiled)  # the compiled run also takes the fused path
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        step = make_step(model, opt, dev, "fp32", compiled)
        g = torch.Generator().manual_seed(5)
        out = []
        for _ in range(3):
            x = torch.randint(0, 512, (2, 32), generator=g)
            out.append(step(x, torch.roll(x, -1, 1)))
        losses[compiled] = out
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)
    assert losses[True][-1] < losses[True][0]  # it trains


def test_switches_are_honoured_or_refused():
    from types import SimpleNamespace as NS

    from llmctl.errors import LlmctlError
    from llmctl.parallel.dims import ParallelDims
    from llmctl.train.speed import check_fused_qkv, compile_enabled, optimizer_options

    cuda, cpu = NS(type="cuda"), NS(type="cpu")
    assert compile_enabled("auto", cuda) is True
    assert compile_enabled("auto", cpu) is False
    assert compile_enabled("auto", cuda, world=2) is False
    assert compile_enabled(True, cpu) is True and compile_enabled(False, cuda) is False
    with pytest.raises(LlmctlError, match="training.compile = true is not supported with 4 ranks"):
        compile_enabled(True, None, world=4)
    assert optimizer_options("auto", cuda) == {"fused": True}
    assert optimizer_options("auto", cpu) == {}
    assert optimizer_options(True, cpu) == {"fused": True}
    assert optimizer_options(False, cuda) == {"foreach": True}
    check_fused_qkv(True, ParallelDims(dp=2))
    check_fused_qkv(True, ParallelDims(dp=2, pp=2))
    with pytest.raises(LlmctlError, match=r"fused_qkv is not supported with tensor parallelism \(tp = 2\)"):
        check_fused_qkv(True, ParallelDims(tp=2))
    with pytest.raises(LlmctlError, match="ZeRO-3"):
        check_fused_qkv(True, ParallelDims(dp=2, dp_mode="zero", zero_stage=3))
    check_fused_qkv(False, ParallelDims(tp=2))


@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_fused_setting_builds_that_optimizer(fused):
    from llmctl.config.train import TrainConfig
    from llmctl.train.optim import build_optimizer

    plain, _ = _pair(GQA)
    cfg = TrainConfig.model_validate({"model": {"name": "x", "config_file": "m.json"},
                                      "optimizer": {"fused": fused}})
    opt = build_optimizer(plain, cfg, torch.device("cpu"))
    assert opt.defaults["fused"] is (True if fused else None)
    assert opt.defaults["foreach"] is (None if fused else True)


def test_config_values(tmp_path):
    from llmctl.config.base import load_config
    from llmctl.config.train import TrainConfig
    from llmctl.errors import ConfigError

    base = '[model]\nname = "x"\nconfig_file = "m.json"\n'
    p = tmp_path / "t.toml"
    p.write_text(base)
    cfg = load_config(p, TrainConfig)
    assert (cfg.training.compile, cfg.kernels.fused_qkv, cfg.optimizer.fused) == ("auto", False, "auto")
    p.write_text(base + '[training]\ncompile = true\n[kernels]\nfused_qkv = true\n[optimizer]\nfused = false\n')
    cfg = load_config(p, TrainConfig)
    assert (cfg.training.compile, cfg.kernels.fused_qkv, cfg.optimizer.fused) == (True, True, False)
    p.write_text(base + '[training]\ncompile = "yes"\n')
    with pytest.raises(ConfigError, match="training.compile"):
        load_config(p, TrainConfig)


def test_serving_dtype_auto_is_bf16_on_a_gpu():
    from llmctl.serve.start import auto_dtype

    assert auto_dtype("cuda") == "bf16" and auto_dtype("cuda:1") == "bf16"
    assert auto_dtype("cpu") == "fp32"
