"""Showing a plan: text tables, the TOML file, and a PNG picture.

The picture has two panels: stacked memory per pipeline stage (weights,
gradients, optimizer, activations, other) with a line at the device's memory, and
where the step time goes, one labelled horizontal bar per part (llmctl.charts).
It is drawn with matplotlib (the `plot` extra), imported only when a picture is
asked for.
"""

from __future__ import annotations

from pathlib import Path

import click

MEM_PARTS = ("weights", "gradients", "optimizer", "activations", "other")


def recompute_name(p) -> str:
    """'partial' for full recomputation of only some blocks (the solver's own option)."""
    if p.recompute == "full" and p.recompute_layers_per_stage and p.recompute_layers_per_stage != p.layers_per_stage:
        return "partial"
    return p.recompute


def flops_text(tflops: float) -> str:
    """A rate with a unit that shows its digits: TFLOP/s, else GFLOP/s (a tiny model on a CPU)."""
    if tflops >= 1 or tflops == 0:
        return f"{tflops:.1f} TFLOP/s"
    return f"{tflops * 1e3:.1f} GFLOP/s" if tflops >= 1e-3 else f"{tflops * 1e6:.1f} MFLOP/s"


def print_plan(plan) -> None:
    p, pr = plan.parallelism, plan.predicted
    i = plan.inputs
    cpu = i.device == "cpu"
    unit = "CPU process" if cpu else "GPU"
    devices = f"{i.gpus_per_node} {unit}{'es' if cpu and i.gpus_per_node != 1 else ''}" if cpu else \
        f"{i.gpus_per_node} GPU{'s' if i.gpus_per_node != 1 else ''}"
    click.echo(f"plan for {i.model} on {i.nodes} node{'s' if i.nodes != 1 else ''} x {devices} "
               f"(seq {i.seq_len}, global batch {i.global_batch}, {i.strategy}"
               f"{'' if i.engine == 'megatron' else ', engine ' + i.engine})")
    click.echo(f"  tp={p.tp} pp={p.pp} dp={p.dp} cp={p.cp} vpp={p.vpp} micro_batch={p.micro_batch} "
               f"grad_accum={p.grad_accum} zero={p.zero_stage} recompute={recompute_name(p)}")
    if p.layers_per_stage:
        click.echo(f"  layers per stage: {p.layers_per_stage}")
    if p.recompute == "full" and p.recompute_layers_per_stage != p.layers_per_stage:
        click.echo(f"  partial recomputation: blocks recomputed per stage {p.recompute_layers_per_stage}")
    if pr is None:
        return
    step = f"{pr.step_time_s:.3f} s" if pr.step_time_s >= 0.1 else f"{pr.step_time_s * 1e3:.3g} ms"
    click.echo(f"  step {step}, {pr.tokens_per_s:,.0f} tokens/s, "
               f"{flops_text(pr.tflops_per_gpu)} per {unit} (MFU {pr.mfu:.1%}), "
               f"{pr.memory_gb_per_gpu:.1f} GB on the fullest {unit}")
    from llmctl.cli.common import print_table

    click.echo(f"\nmemory per {unit} by stage (GB)")
    print_table([{"stage": m.stage, **{k: f"{getattr(m, k):.2f}" for k in MEM_PARTS + ("total",)}}
                 for m in pr.memory_per_stage], ["stage", *MEM_PARTS, "total"])
    click.echo("\nwhere the step time goes (s)")
    total = sum(pr.time_breakdown_s.values()) or 1.0
    print_table([{"part": k, "seconds": f"{v:.4f}", "share": f"{v / total:.1%}"}
                 for k, v in pr.time_breakdown_s.items()], ["part", "seconds", "share"])
    if plan.alternatives:
        click.echo("\nalternatives")
        print_table([{"tp": a.parallelism.tp, "pp": a.parallelism.pp, "dp": a.parallelism.dp,
                      "cp": a.parallelism.cp, "vpp": a.parallelism.vpp, "mb": a.parallelism.micro_batch,
                      "zero": a.parallelism.zero_stage, "recompute": recompute_name(a.parallelism),
                      "step_s": f"{a.predicted.step_time_s:.3f}", "mem_gb": f"{a.predicted.memory_gb_per_gpu:.1f}"}
                     for a in plan.alternatives],
                    ["tp", "pp", "dp", "cp", "vpp", "mb", "zero", "recompute", "step_s", "mem_gb"])
    if plan.solver:
        s = plan.solver
        click.echo(f"\nsolver: {s.name} {s.status} in {s.seconds:.3f} s "
                   f"({s.variables} variables, {s.constraints} constraints)")


def write_plan(plan, path: str) -> None:
    """Write the plan as TOML, atomically (no half-written file on failure)."""
    import tomli_w

    from llmctl.fsutil import atomic_write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "# written by `llmctl plan compute`\n" + tomli_w.dumps(plan.to_data()))


def write_png(plan, path: str) -> None:
    """Memory per stage with the device's capacity (left) and where the step time goes (right)."""
    from llmctl.charts import save

    save(plan_picture(plan), Path(path))


def plan_picture(plan):
    """The plan's figure (matplotlib), unsaved."""
    from llmctl.charts import plan_figure

    pr = plan.predicted
    i = plan.inputs
    mem = {f"stage {m.stage}": {part: getattr(m, part) for part in MEM_PARTS} for m in pr.memory_per_stage}
    p = plan.parallelism
    unit = "CPU process" if i.device == "cpu" else "GPU"
    title = f"memory per {unit}: tp={p.tp} pp={p.pp} dp={p.dp} cp={p.cp}"
    step = f"{pr.step_time_s:.3g} s" if pr.step_time_s >= 0.1 else f"{pr.step_time_s * 1e3:.3g} ms"
    return plan_figure(mem, i.memory_gb, title, dict(pr.time_breakdown_s), f"where the step time goes ({step} per step)",
                       unit=unit)
