"""`python -m llmctl.gpucheck [--cpu] [--out DIR] [--only a,b]`: run the sections, write
gpu-check.json and gpu-check.txt into DIR ($OUT, else ./gpu-check-out)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# (name, function path, budget in seconds on a GPU, on a CPU). The GPU budgets add up to
# 470 s: the whole run stays within 8 minutes on one H100 (a section past 1.5x its budget
# is cut off; compilation is the part no loop can shorten). tp2 and nccl run only with two
# or more GPUs (skipped at once on one, leaving their time to spare).
SECTIONS = (
    ("probe", "node:probe", 20, 30),
    ("bench", "node:bench", 30, 10),
    ("train_gpt2", "training:train_gpt2", 160, 150),
    ("train_1b", "training:train_1b", 100, 60),
    ("serve", "serving:serve", 100, 90),
    ("tp2", "tpdecode:tp2", 45, 60),
    ("nccl", "node:nccl", 15, 5),
)


def summary(report: dict) -> list[str]:
    """The short text: one or two lines a section."""
    from llmctl.gpucheck.report import fmt

    env = report["environment"]
    lines = [f"llmctl gpu-check ({report['mode']}) on {env['device']} x{max(env['gpus'], 1)}, torch {env['torch']}, "
             f"{report['seconds']:.0f} s"]
    for name, sec in report["sections"].items():
        r = sec["results"]
        head = f"{name:<11} {sec['status']:<8}"
        if sec["status"] in ("skipped", "failed"):
            lines.append(f"{head} {sec['reason'] or sec['error']}")
            continue
        if sec["error"]:
            lines.append(f"{'':<20} error: {sec['error']}")
        if name == "probe":
            agree = r.get("agrees_with_nvidia_smi")
            lines.append(f"{head} {r.get('gpus')} GPU(s) {r.get('gpu_names')}; nvidia-smi agrees: "
                         f"{all(agree.values()) if agree else 'n/a (' + sec['skipped_parts'].get('nvidia_smi', '') + ')'}")
        elif name == "bench":
            lines.append(f"{head} matmul bf16 {r.get('matmul_n')}^3: llmctl {fmt(r.get('llmctl_matmul_bf16_tflops'))} vs "
                         f"torch {fmt(r.get('torch_matmul_bf16_tflops'))} TFLOP/s; copy: llmctl "
                         f"{fmt(r.get('llmctl_copy_gbps'))} vs torch {fmt(r.get('torch_copy_gbps'))} GB/s")
        elif name == "train_gpt2":
            parts = [f"{k} {fmt(v['tokens_per_s'])} tok/s MFU {fmt(v['mfu'])}"
                     for k, v in r.items() if isinstance(v, dict) and "tokens_per_s" in v]
            lines.append(f"{head} " + "; ".join(parts))
            lines.append(f"{'':<20} ratios: " + ", ".join(f"{k} {fmt(v)}" for k, v in r.get("ratios", {}).items()))
        elif name == "train_1b":
            plan = r.get("plan", {})
            err = ", ".join(f"{k}: measured/predicted {fmt(v.get('measured_over_predicted'))}"
                            for k, v in plan.items())
            lines.append(f"{head} step {fmt(r.get('step_time_s'), ' s')} ({'compiled' if r.get('compiled') else 'eager'}), "
                         f"MFU {fmt(r.get('mfu'))}; plan {err or 'n/a'}")
        elif name == "serve":
            parts = [f"{k} {fmt(v['decode_tokens_per_s'])} tok/s (TTFT {fmt(v['ttft_s'] * 1e3)} ms)"
                     for k, v in r.items() if isinstance(v, dict) and "decode_tokens_per_s" in v]
            lines.append(f"{head} " + "; ".join(parts))
            lines.append(f"{'':<20} bs-1 roofline {fmt(r.get('roofline_bs1_tokens_per_s'))} tok/s, llmctl at "
                         f"{fmt(r.get('llmctl_c1_over_roofline'))} of it")
        elif name == "tp2":
            parts = [f"{k} {fmt(v['decode_tokens_per_s'])} tok/s (TTFT {fmt(v['ttft_s'] * 1e3)} ms)"
                     for k, v in r.items() if isinstance(v, dict) and "decode_tokens_per_s" in v]
            lines.append(f"{head} {r.get('backend')} all-reduce, {r.get('launcher', {}).get('flavour')} "
                         f"launcher: " + "; ".join(parts))
            if r.get("ratios"):
                lines.append(f"{'':<20} ratios: " + ", ".join(f"{k} {fmt(v)}" for k, v in r["ratios"].items()))
        elif name == "nccl":
            lines.append(f"{head} all-reduce busbw {fmt(r.get('allreduce_busbw_gbps'))} GB/s over {r.get('gpus')} GPUs")
        else:
            lines.append(head)
        for part, why in sec["skipped_parts"].items():
            lines.append(f"{'':<20} skipped {part}: {why}")
        for note in sec["notes"]:
            lines.append(f"{'':<20} note: {note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu-check", description=__doc__)
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (what CI runs)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out", help="output folder")
    ap.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    args = ap.parse_args(argv)
    names = [n for n, *_ in SECTIONS]
    only = [x for x in args.only.split(",") if x]
    bad = [x for x in only if x not in names]
    if bad:
        print(f"gpu-check: unknown section {bad[0]!r}; sections: {', '.join(names)}", file=sys.stderr)
        return 2

    import importlib

    try:
        import torch  # noqa: F401
    except ImportError as e:
        print(f"gpu-check: torch is not importable with {sys.executable}: {e}", file=sys.stderr)
        return 2
    from llmctl.gpucheck.report import Context, header, run_section, write

    started = time.time()
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.cpu, out)
    report = header(ctx, started)
    report["sections"] = {}
    chosen = [(n, t, c if ctx.cpu else g) for n, t, g, c in SECTIONS if not only or n in only]
    total = sum(b for *_, b in chosen)
    for i, (name, target, budget) in enumerate(chosen):
        # A section that overran shrinks the later ones' budgets (to half their share at
        # least), so that the run as a whole keeps close to the sum of the budgets.
        left = total - (time.time() - started)
        rest = sum(b for *_, b in chosen[i + 1:])
        budget = max(min(budget, left - rest / 2), budget / 2)
        mod, fn = target.split(":")
        func = getattr(importlib.import_module(f"llmctl.gpucheck.{mod}"), fn)
        report["sections"][name] = run_section(name, func, round(budget, 1), ctx)
        report["seconds"] = round(time.time() - started, 2)
        write(out, report, summary(report))  # after every section: a crash later keeps what was measured
    lines = summary(report)
    jp, tp = write(out, report, lines)
    print("\n".join(lines))
    print(f"gpu-check: wrote {jp} and {tp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
