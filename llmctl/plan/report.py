"""Showing a plan: text tables, the TOML file, and a PNG picture drawn without matplotlib.

The picture has two panels: stacked memory per pipeline stage (weights,
gradients, optimizer, activations, other) against the GPU's memory line, and one
stacked bar of where the step time goes. It is written with zlib only, so
`plan explain` stays a login-node command.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import click

MEM_PARTS = ("weights", "gradients", "optimizer", "activations", "other")
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def print_plan(plan) -> None:
    p, pr = plan.parallelism, plan.predicted
    i = plan.inputs
    click.echo(f"plan for {i.model} on {i.nodes} x {i.gpus_per_node} GPUs "
               f"(seq {i.seq_len}, global batch {i.global_batch}, {i.strategy})")
    click.echo(f"  tp={p.tp} pp={p.pp} dp={p.dp} cp={p.cp} vpp={p.vpp} micro_batch={p.micro_batch} "
               f"grad_accum={p.grad_accum} zero={p.zero_stage} recompute={p.recompute}")
    if p.layers_per_stage:
        click.echo(f"  layers per stage: {p.layers_per_stage}")
    if p.recompute == "full":
        click.echo(f"  recomputed per stage: {p.recompute_layers_per_stage}")
    if pr is None:
        return
    click.echo(f"  step {pr.step_time_s:.3f} s, {pr.tokens_per_s:,.0f} tokens/s, "
               f"{pr.tflops_per_gpu:.1f} TFLOP/s per GPU (MFU {pr.mfu:.1%}), "
               f"{pr.memory_gb_per_gpu:.1f} GB on the fullest GPU")
    from llmctl.cli.common import print_table

    click.echo("\nmemory per GPU by stage (GB)")
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
                      "zero": a.parallelism.zero_stage, "recompute": a.parallelism.recompute,
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


def write_png(plan, path: str, width: int = 720, height: int = 400) -> None:
    """Memory per stage (left) and the step-time breakdown (right) as a PNG."""
    pr = plan.predicted
    img = [[(255, 255, 255)] * width for _ in range(height)]

    def rect(x0, y0, x1, y1, colour):
        for y in range(max(0, int(y0)), min(height, int(y1))):
            row = img[y]
            for x in range(max(0, int(x0)), min(width, int(x1))):
                row[x] = colour

    # left panel: stacked bars, one per stage, scaled to the GPU's memory (or the fullest stage)
    left, bottom, top, panel_w = 20, height - 20, 20, width // 2 - 40
    cap = max([plan.inputs.memory_gb or 0.0] + [m.total for m in pr.memory_per_stage]) or 1.0
    n = max(1, len(pr.memory_per_stage))
    bar = max(1, panel_w // n)
    for i, m in enumerate(pr.memory_per_stage):
        y = bottom
        for k, part in enumerate(MEM_PARTS):
            hgt = getattr(m, part) / cap * (bottom - top)
            rect(left + i * bar + 1, y - hgt, left + (i + 1) * bar - 1, y, COLOURS[k])
            y -= hgt
    if plan.inputs.memory_gb:
        rect(left, bottom - plan.inputs.memory_gb / cap * (bottom - top) - 1, left + n * bar,
             bottom - plan.inputs.memory_gb / cap * (bottom - top) + 1, (0, 0, 0))
    # right panel: one stacked bar of the step's parts
    x0 = width // 2 + 20
    total = sum(pr.time_breakdown_s.values()) or 1.0
    y = bottom
    for k, (_, v) in enumerate(pr.time_breakdown_s.items()):
        hgt = v / total * (bottom - top)
        rect(x0, y - hgt, x0 + 80, y, COLOURS[(k + 5) % len(COLOURS)])
        # legend square beside the bar
        rect(x0 + 100, top + 16 * k, x0 + 112, top + 16 * k + 12, COLOURS[(k + 5) % len(COLOURS)])
        y -= hgt
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in img)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(target)
