"""gpu-check's training sections: llmctl's step on the GPT-2 124M shape beside the
nanoGPT-style reference (interleaved repetitions, same tokens per step), and a ~1B Llama
step beside the planner's prediction for that layout on this node's profile."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable

from llmctl.gpucheck.report import Section, Skip

GPT2 = {"gpu": dict(layers=12, hidden=768, heads=12, vocab_size=50304, seq=1024, batch=12),
        "cpu": dict(layers=2, hidden=64, heads=4, vocab_size=512, seq=64, batch=2)}
# Llama-3.2-1B's shape (1.24 B parameters), trained at 2048 tokens, 4 sequences a step.
LLAMA_1B = {"gpu": dict(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab_size=128256, seq=2048,
                        batch=4),
            "cpu": dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab_size=512, seq=64, batch=2)}


def _peak(sec: Section) -> tuple[float | None, str]:
    """Peak FLOP/s of one device for MFU: the accelerator table on a GPU (bf16 dense), the
    probed profile's estimate on a CPU."""
    from llmctl.train.metrics import peak_flops

    path = sec.ctx.shared.get("profile_path")
    if sec.ctx.cpu:
        return peak_flops(path, sec.ctx.device) if path else (None, "unknown (probe did not run)")
    return peak_flops(None, sec.ctx.device)


def _llmctl_step(cfg, sec: Section, compiled: bool, fused_qkv: bool = False, train_overrides=None):
    """llmctl's model, optimizer (as `build_optimizer` makes it from a default training
    config) and step (`llmctl.train.speed.make_step`: what the trainer runs)."""
    import torch

    from llmctl.config.train import TrainConfig
    from llmctl.model.transformer import Transformer
    from llmctl.train.optim import build_optimizer, resolve_precision
    from llmctl.train.speed import make_step

    dev = sec.ctx.device
    tcfg = TrainConfig.model_validate({"model": {"name": cfg.name, "config_file": "model.json"},
                                       **(train_overrides or {})})
    torch.manual_seed(0)
    model = Transformer(cfg).to(dev)
    model.set_fused_qkv(fused_qkv)
    opt = build_optimizer(model, tcfg, dev)
    return make_step(model, opt, dev, resolve_precision(tcfg.training.precision, dev), compiled,
                     tcfg.optimizer.grad_clip)


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _interleaved(sec: Section, variants: dict[str, Callable], x, y, rounds: int, steps: int,
                 share: float) -> dict[str, list[float]]:
    """Seconds per step of each variant: `rounds` rounds, each timing `steps` steps of every
    variant in turn (so drift in clocks or temperature hits them alike), within `share` s."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    deadline = time.perf_counter() + share
    for r in range(rounds):
        for name, step in variants.items():
            _sync(sec.ctx.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(x, y)  # each step ends in a host sync (loss and norm to the host)
            times[name].append((time.perf_counter() - t0) / steps)
        if time.perf_counter() > deadline and r >= 1:
            break
    return times


def train_gpt2(sec: Section) -> None:
    import torch

    from llmctl.config.model import ModelConfig
    from llmctl.gpucheck import reference
    from llmctl.train.metrics import flops_per_token

    s = GPT2["cpu" if sec.ctx.cpu else "gpu"]
    dev = sec.ctx.device
    cfg = ModelConfig(name="gpt2-124m", template="gpt", layers=s["layers"], hidden=s["hidden"], heads=s["heads"],
                      vocab_size=s["vocab_size"], max_seq_len=s["seq"])
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, s["vocab_size"], (s["batch"], s["seq"]), generator=g).to(dev)
    y = torch.randint(0, s["vocab_size"], (s["batch"], s["seq"]), generator=g).to(dev)
    res = sec.results
    res["shape"] = s
    tokens = s["batch"] * s["seq"]

    def ref(compiled: bool):
        torch.manual_seed(0)
        m = reference.GPT(s["layers"], s["hidden"], s["heads"], s["vocab_size"], s["seq"]).to(dev)
        return reference.make_step(m, reference.optimizer(m, dev), dev, compiled)

    builders = {"llmctl_eager": lambda: _llmctl_step(cfg, sec, False),
                "reference_eager": lambda: ref(False),
                "llmctl_compiled": lambda: _llmctl_step(cfg, sec, True),
                "reference_compiled": lambda: ref(True),
                "llmctl_compiled_fused_qkv": lambda: _llmctl_step(cfg, sec, True, fused_qkv=True)}
    variants, first = {}, {}
    for name, build in builders.items():
        # keep a third of the budget for the timed rounds; the last variant is optional
        if variants and sec.left() < sec.budget_s / 3:
            sec.skipped[name] = f"budget: {sec.left():.0f} s left after warm-ups"
            continue
        t0 = time.perf_counter()
        step = build()
        first[name] = [step(x, y) for _ in range(3)]  # warm-up (compilation happens here)
        _sync(dev)
        res.setdefault("warmup_s", {})[name] = time.perf_counter() - t0
        variants[name] = step
        sec.log(f"{name}: warm-up {time.perf_counter() - t0:.1f} s, loss {first[name][-1]:.4f}")
    res["first_losses"] = first
    times = _interleaved(sec, variants, x, y, rounds=3 if sec.ctx.cpu else 5, steps=2 if sec.ctx.cpu else 10,
                         share=max(sec.left() - 5, 1))
    fpt = flops_per_token(cfg, s["seq"])
    peak, source = _peak(sec)
    res["flops_per_token"], res["peak_flops"], res["peak_source"] = fpt, peak, source
    res["rounds"] = {k: len(v) for k, v in times.items()}
    for name, ts in times.items():
        t = statistics.median(ts)
        res[name] = {"step_ms": t * 1e3, "tokens_per_s": tokens / t,
                     "mfu": fpt * tokens / t / peak if peak else None}
    ratios = {}
    for mode in ("eager", "compiled"):
        a, b = res.get(f"llmctl_{mode}"), res.get(f"reference_{mode}")
        if a and b:
            ratios[f"{mode}_llmctl_over_reference"] = a["tokens_per_s"] / b["tokens_per_s"]
    if res.get("llmctl_compiled") and res.get("llmctl_eager"):
        ratios["llmctl_compiled_over_eager"] = res["llmctl_compiled"]["tokens_per_s"] / res["llmctl_eager"]["tokens_per_s"]
    if res.get("llmctl_compiled_fused_qkv") and res.get("llmctl_compiled"):
        ratios["fused_qkv_over_unfused"] = (res["llmctl_compiled_fused_qkv"]["tokens_per_s"]
                                            / res["llmctl_compiled"]["tokens_per_s"])
    res["ratios"] = ratios


def train_1b(sec: Section) -> None:
    import torch

    from llmctl.config.model import ModelConfig
    from llmctl.train.metrics import flops_per_token, memory_gb
    from llmctl.train.speed import compile_enabled

    s = LLAMA_1B["cpu" if sec.ctx.cpu else "gpu"]
    dev = sec.ctx.device
    cfg = ModelConfig(name="llama-1b", template="llama", layers=s["layers"], hidden=s["hidden"], heads=s["heads"],
                      kv_heads=s["kv_heads"], ffn=s["ffn"], vocab_size=s["vocab_size"], max_seq_len=s["seq"],
                      tie_embeddings=True, rope={"base": 500000.0})
    model_path = sec.ctx.out / "llama-1b.json"
    model_path.write_text(json.dumps(cfg.to_data(), indent=1) + "\n")
    res = sec.results
    res["shape"] = s
    compiled = compile_enabled("auto", dev)  # the trainer's default on this device
    res["compiled"] = compiled
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(dev)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, s["vocab_size"], (s["batch"], s["seq"]), generator=g).to(dev)
    y = torch.randint(0, s["vocab_size"], (s["batch"], s["seq"]), generator=g).to(dev)
    t0 = time.perf_counter()
    step = _llmctl_step(cfg, sec, compiled)
    losses = [step(x, y) for _ in range(2)]
    res["warmup_s"], res["first_losses"] = time.perf_counter() - t0, losses
    times = []
    deadline = time.perf_counter() + max(min(sec.left() * 0.5, 60), 1)
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 30):
        t = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t)
    tokens = s["batch"] * s["seq"]
    step_s = statistics.median(times)
    fpt = flops_per_token(cfg, s["seq"])
    peak, source = _peak(sec)
    res.update(steps=len(times), step_time_s=step_s, tokens_per_s=tokens / step_s,
               mfu=fpt * tokens / step_s / peak if peak else None, peak_flops=peak, peak_source=source,
               memory_gb=memory_gb(dev))
    try:
        res["plan"] = _predict(sec, model_path, s)
    except Skip as e:  # the measurement above stands without the prediction
        sec.skipped["plan"] = str(e)


def _predict(sec: Section, model_path, s: dict[str, Any]) -> dict[str, Any]:
    """The planner's prediction for this very layout (1 device, no parallelism, micro-batch
    = the batch, no recomputation) on the probed profile, and on it with the bench section's
    measured figures; measured / predicted step time is the plan's error on a real run."""
    from llmctl.hw.profile import validate, write_profile
    from llmctl.plan.api import Request, compute_plan
    from llmctl.plan.search import Fixed

    profile = sec.ctx.shared.get("profile_path")
    if profile is None:
        raise Skip("no probed profile (the probe section did not run)")
    out: dict[str, Any] = {}
    profiles = {"datasheet": profile}
    measured = {k: sec.ctx.shared[k] for k in ("matmul_tflops_bf16", "memory_bw_gbps") if k in sec.ctx.shared}
    if measured:
        import copy

        data = copy.deepcopy(sec.ctx.shared["profile_data"])
        data["measured"] = {**data.get("measured", {}), **measured}
        mp = sec.ctx.out / "node-profile-measured.toml"
        write_profile(data, mp, "toml")
        validate(data)
        profiles["measured"] = mp
    for name, path in profiles.items():
        try:
            req = Request(model=str(model_path), hardware=str(path), nodes=1, gpus_per_node=1, seq_len=s["seq"],
                          global_batch=s["batch"], strategy="manual",
                          fixed=Fixed(tp=1, pp=1, dp=1, cp=1, vpp=1, mb=s["batch"], zero=0, recompute="none"),
                          top=1, time_limit=30)
            plan, _ = compute_plan(req)
            p = plan.predicted
            step = sec.results["step_time_s"]
            out[name] = {"profile": str(path), "predicted_step_time_s": p.step_time_s, "predicted_mfu": p.mfu,
                         "measured_over_predicted": step / p.step_time_s}
        except Exception as e:  # one profile's plan failing keeps the other's
            out[name] = {"profile": str(path), "error": f"{type(e).__name__}: {e}"}
    return out
