"""GPT-2-124M shape on one GPU: tokens/s and MFU of the training step (issue #6's H100 check).

12 layers, 768 wide, 12 heads, vocabulary 50304, sequence 1024, micro-batch 12, bf16
autocast, fused AdamW, the same model and step as `llmctl.train` (with and without
torch.compile). The reference to beat: a compiled reference trainer at about 430,000
tokens/s (28.6 ms per 12x1024-token step) on an H100. Skips without a CUDA GPU.

    make bench   # or: python -m pytest -q tests/bench/test_train_gpu.py --benchmark-enable -s
"""

from __future__ import annotations

import pytest

from conftest import needs

torch = pytest.importorskip("torch")

BATCH, SEQ = 12, 1024


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_gpt2_124m_step(benchmark, compiled):
    needs("gpu", torch.cuda.is_available(), "no CUDA GPU")
    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer
    from llmctl.train.metrics import flops_per_token, peak_flops

    cfg = ModelConfig(name="gpt2-124m", template="gpt", layers=12, hidden=768, heads=12, vocab_size=50304,
                      max_seq_len=SEQ)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = Transformer(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, fused=True)
    step_fn = torch.compile(model) if compiled else model
    x = torch.randint(0, 50304, (BATCH, SEQ), device=dev)
    y = torch.randint(0, 50304, (BATCH, SEQ), device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    for _ in range(3):  # warm-up (and compilation)
        step()
    benchmark.pedantic(step, rounds=20, iterations=1)
    if benchmark.stats:
        secs = benchmark.stats.stats.mean
        tps = BATCH * SEQ / secs
        peak, source = peak_flops(None, dev)
        benchmark.extra_info.update({
            "ms_per_step": round(secs * 1e3, 2), "tokens_per_s": round(tps),
            "mfu": round(flops_per_token(cfg, SEQ) * tps / peak, 4) if peak else None, "peak": source,
            "device": torch.cuda.get_device_name(dev)})
        print(benchmark.extra_info)
