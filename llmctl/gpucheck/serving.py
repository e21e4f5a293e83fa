"""gpu-check's serving section: decode tokens/s of a Llama-3.2-1B-shape model (random
weights) at 1 and 64 concurrent requests, llmctl's engine beside transformers' `generate`
(default cache, then static cache) on the same weights and prompts; time to first token;
the 1-request figure against the weights-over-bandwidth roofline; the paged attention
path that `auto` does not pick on this device, and `compile`, beside the default."""

from __future__ import annotations

import time
from typing import Any

from llmctl.gpucheck.report import Section

SHAPE = {"gpu": dict(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab_size=128256, max_seq_len=2048,
                     prompt=128, new_tokens=128),
         "cpu": dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab_size=512, max_seq_len=128,
                     prompt=16, new_tokens=32)}
CONCURRENCY = (1, 64)


def _model(sec: Section, s: dict[str, Any]):
    return llama(s, sec.ctx.device)


def llama(s: dict[str, Any], device):
    """The section's random-weight model of shape `s` on `device`, in serving's dtype there
    (also what the tp2 section's ranks build and shard: the same seed, the same weights)."""
    import torch

    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer

    cfg = ModelConfig(name="llama-3.2-1b-shape", template="llama", layers=s["layers"], hidden=s["hidden"],
                      heads=s["heads"], kv_heads=s["kv_heads"], ffn=s["ffn"], vocab_size=s["vocab_size"],
                      max_seq_len=s["max_seq_len"], tie_embeddings=True, rope={"base": 500000.0})
    torch.manual_seed(0)
    device = torch.device(device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16  # serving's dtype on each device
    with device:  # initialised where it runs: 1 B parameters initialise slowly on a CPU
        model = Transformer(cfg)
    return model.to(dtype=dtype).eval()


def _prompts(n: int, s: dict[str, Any]) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(n)
    return torch.randint(0, s["vocab_size"], (n, s["prompt"]), generator=g).tolist()


def engine_run(model, prompts: list[list[int]], new_tokens: int, compile: bool = False,
               paged_attention: str = "auto", engine=None) -> dict[str, float]:
    """One batch of requests through llmctl's engine (a new one, or `engine`): TTFT (mean,
    from submission) and the decode rate (tokens after each request's first, over the time
    after the last first token)."""
    from llmctl.serve.engine import Engine
    from llmctl.serve.sequence import SamplingParams, Sequence

    eng = engine
    if eng is None:
        eng = Engine(model, eos_id=None, max_seqs=max(len(prompts), 1),
                     max_batch_tokens=max(8192, len(prompts) * len(prompts[0])), compile=compile,
                     paged_attention=paged_attention)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    seqs = [Sequence(p, params) for p in prompts]
    t0 = time.monotonic()
    for q in seqs:
        q.arrival = t0
        eng.add(q)
    while eng.has_work:
        eng.step()
    end = time.monotonic()
    firsts = [q.first_token_at for q in seqs]
    last_first = max(firsts)
    decoded = sum(len(q.output_ids) - 1 for q in seqs)
    return {"ttft_s": sum(f - t0 for f in firsts) / len(firsts), "decode_tokens_per_s": decoded / (end - last_first),
            "total_s": end - t0, "tokens": sum(len(q.output_ids) for q in seqs)}


def _hf_model(model):
    """A transformers Llama with the very same weights (llmctl's export mapping)."""
    import torch
    import transformers

    from llmctl.export.families import config_json
    from llmctl.export.hf import to_hf_state

    cj = dict(config_json(model.cfg))
    kind = cj.pop("model_type")
    conf = transformers.AutoConfig.for_model(kind, **{k: v for k, v in cj.items() if k != "architectures"})
    dtype, dev = model.tok_emb.weight.dtype, model.tok_emb.weight.device
    with torch.device(dev):  # initialised where it runs: 1 B parameters initialise slowly on a CPU
        hf = transformers.AutoModelForCausalLM.from_config(conf)
    hf = hf.to(dtype)
    state = to_hf_state(model.cfg, {k: v for k, v in model.state_dict().items()})
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"weights did not map onto transformers' model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if conf.tie_word_embeddings:
        hf.tie_weights()
    return hf.eval()


def hf_run(hf, prompts: list[list[int]], new_tokens: int, cache: str | None) -> dict[str, float]:
    import torch

    dev = next(hf.parameters()).device
    ids = torch.tensor(prompts, device=dev)
    kw: dict[str, Any] = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0,
                              eos_token_id=None)
    if cache:
        kw["cache_implementation"] = cache

    def timed(n: int) -> tuple[float, int]:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0, out.shape[1] - ids.shape[1]

    ttft = min(timed(1)[0] for _ in range(2))  # prefill + first token (+ generate's own set-up)
    total, got = timed(new_tokens)
    if total <= ttft * 1.05 or got < 2:
        raise RuntimeError(f"cannot tell decode from set-up: {got} tokens took {total:.3f} s, "
                           f"the first alone {ttft:.3f} s (noisy machine?)")
    return {"ttft_s": ttft, "decode_tokens_per_s": len(prompts) * (got - 1) / (total - ttft),
            "total_s": total, "tokens": len(prompts) * got}


def serve(sec: Section) -> None:
    s = SHAPE["cpu" if sec.ctx.cpu else "gpu"]
    model = _model(sec, s)
    res = sec.results
    res["shape"] = s
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = sec.ctx.shared.get("memory_bw_gbps")
    res["weight_bytes"] = weight_bytes
    if bw:
        # Every decode step of one request reads every weight once: bandwidth / bytes bounds it.
        res["roofline_bs1_tokens_per_s"] = bw * 1e9 / weight_bytes
        res["roofline_bandwidth_gbps"] = bw
    else:
        sec.skipped["roofline"] = "no measured memory bandwidth (the bench section did not run)"
    engine_run(model, _prompts(2, s)[:2], 4)  # warm-up: kernels chosen, allocator primed
    for n in CONCURRENCY:
        r = engine_run(model, _prompts(n, s), s["new_tokens"])
        res[f"llmctl_c{n}"] = r
        sec.ctx.shared[f"serve_decode_c{n}"] = r["decode_tokens_per_s"]  # tp2's reference
        sec.log(f"llmctl engine, {n} requests: {r['decode_tokens_per_s']:.1f} decode tokens/s, "
                f"TTFT {r['ttft_s'] * 1e3:.1f} ms")
    # ServeConfig `paged_attention`: the path "auto" does not take on this device, beside it
    from llmctl.serve.engine import paged_attention_for

    default = paged_attention_for("auto", sec.ctx.device)
    res["paged_attention_default"] = default
    base = "gather" if default in ("gather", "auto") else "blockwise"  # (auto: contexts here are short)
    other = "blockwise" if base == "gather" else "gather"
    engine_run(model, _prompts(2, s)[:2], 4, paged_attention=other)
    for n in CONCURRENCY:
        r = engine_run(model, _prompts(n, s), s["new_tokens"], paged_attention=other)
        res[f"llmctl_{other}_c{n}"] = r
        ours = res[f"llmctl_c{n}"]["decode_tokens_per_s"]
        ratio = r["decode_tokens_per_s"] / ours if other == "blockwise" else ours / r["decode_tokens_per_s"]
        res.setdefault("ratios", {})[f"blockwise_over_gather_c{n}"] = ratio
        sec.log(f"llmctl engine, paged attention {other}, {n} requests: {r['decode_tokens_per_s']:.1f} "
                f"decode tokens/s")
    # ServeConfig `compile`: each block's dense parts compiled (the warm-up run compiles)
    if sec.left() > sec.budget_s * 0.5:
        engine_run(model, _prompts(2, s)[:1], 4, compile=True)
        engine_run(model, _prompts(2, s)[:2], 4, compile=True)
        for n in CONCURRENCY:
            r = engine_run(model, _prompts(n, s), s["new_tokens"], compile=True)
            res[f"llmctl_compiled_c{n}"] = r
            res.setdefault("ratios", {})[f"llmctl_compiled_over_eager_c{n}"] = (
                r["decode_tokens_per_s"] / res[f"llmctl_c{n}"]["decode_tokens_per_s"])
            sec.log(f"llmctl engine compiled, {n} requests: {r['decode_tokens_per_s']:.1f} decode tokens/s")
    else:
        sec.skipped["llmctl_compiled"] = f"budget: {sec.left():.0f} s left"
    if "roofline_bs1_tokens_per_s" in res:
        res["llmctl_c1_over_roofline"] = res["llmctl_c1"]["decode_tokens_per_s"] / res["roofline_bs1_tokens_per_s"]
    try:
        import transformers  # noqa: F401
    except ImportError:
        sec.skipped["transformers"] = "transformers is not installed here (carry its wheels: docs/performance.md)"
        return
    hf = _hf_model(model)
    for cache in (None, "static"):
        label = "hf_" + (cache or "default")
        for n in CONCURRENCY:
            # generate with a static cache may compile first (transformers' own choice): start
            # it only with room left, so that the whole run keeps to its 8 minutes
            if sec.left() < (sec.budget_s * 0.4 if cache else sec.budget_s * 0.15):
                sec.skipped[f"{label}_c{n}"] = f"budget: {sec.left():.0f} s left"
                continue
            try:
                hf_run(hf, _prompts(2, s)[:min(n, 2)], 2, cache)  # warm-up
                r = hf_run(hf, _prompts(n, s), s["new_tokens"], cache)
            except Exception as e:  # static cache is not supported everywhere: keep the rest
                sec.skipped[f"{label}_c{n}"] = f"{type(e).__name__}: {str(e)[:200]}"
                continue
            res[f"{label}_c{n}"] = r
            ours = res[f"llmctl_c{n}"]["decode_tokens_per_s"]
            res.setdefault("ratios", {})[f"llmctl_over_{label}_c{n}"] = ours / r["decode_tokens_per_s"]
            sec.log(f"transformers generate ({cache or 'default'} cache), {n} requests: "
                    f"{r['decode_tokens_per_s']:.1f} decode tokens/s")
