"""`llmctl plan`: the parallelism plan (issue #4)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option


FIXED = "auto: fixed, the solver chooses the rest; manual: the layout to cost"

@click.group("plan")
def group() -> None:
    """Compute and explain parallelism plans."""


@group.command("compute")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Model config (JSON).")
@click.option("--hardware", type=click.Path(dir_okay=False), help="Hardware profile (TOML/JSON).")
@click.option("--site", default=None, help="Site-config for the node shape.")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), help="GPUs per node.")
@click.option("--seq-len", type=click.IntRange(min=1), help="Sequence length.")
@click.option("--global-batch", type=click.IntRange(min=1),
              help="Sequences per optimizer step (default: --train's, else one per GPU).")
@click.option("--train", "train_path", type=click.Path(dir_okay=False),
              help="Training config: its global batch and sequence length when not given as flags.")
@click.option("--target-flops", type=float, help="FLOP/s ceiling the plan may assume.")
@click.option("--max-memory-gb", type=click.FloatRange(min=0, min_open=True), help="Memory per GPU to plan for.")
@click.option("--max-comm-bw-gbps", type=click.FloatRange(min=0, min_open=True),
              help="Communication bandwidth ceiling in GB/s.")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True),
              help="Peak TFLOP/s per GPU, for GPUs the table does not know.")
@click.option("--strategy", type=click.Choice(["auto", "manual"]), default="auto", show_default=True,
              help="auto: solve; manual: cost the given layout.")
@click.option("--tp", type=click.IntRange(min=1),
              help=f"Tensor-parallel degree ({FIXED}).")
@click.option("--pp", type=click.IntRange(min=1), help=f"Pipeline-parallel stages ({FIXED}).")
@click.option("--dp", type=click.IntRange(min=1), help=f"Data-parallel replicas ({FIXED}).")
@click.option("--cp", type=click.IntRange(min=1),
              help=f"Context-parallel degree: the sequence split across GPUs ({FIXED}).")
@click.option("--vpp", type=click.IntRange(min=1),
              help=f"Virtual pipeline stages per GPU, interleaved 1F1B ({FIXED}).")
@click.option("--micro-batch", type=click.IntRange(min=1),
              help=f"Sequences per micro-batch on each GPU ({FIXED}).")
@click.option("--zero-stage", type=click.IntRange(0, 3),
              help=f"ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also weights ({FIXED}).")
@click.option("--recompute", type=click.Choice(["none", "selective", "full", "partial"]),
              help="none; selective (attention core); full (every block); partial (full recomputation of "
                   "only some blocks per stage, as many as memory needs: the solver's choice).")
@click.option("--tp-across-nodes", is_flag=True, help="Allow tensor parallelism to span nodes.")
@click.option("--precision", type=click.Choice(["bf16", "fp8"]), default="bf16", show_default=True,
              help="fp8: the linear layers' matmuls in FP8 through Transformer Engine (Hopper and later), "
                   "attention and head in bf16; MFU stays relative to the bf16 peak.")
@click.option("--attention", type=click.Choice(["flash", "eager"]), default="flash", show_default=True,
              help="Attention kernel of the run: flash (fused, as llmctl's trainer uses through SDPA) keeps no "
                   "s^2 scores for backward; eager materialises them.")
@click.option("--tp-comm-overlap/--no-tp-comm-overlap", default=False, show_default=True,
              help="The run overlaps tensor-parallel collectives with the GEMMs (Megatron-Core "
                   "--tp-comm-overlap, Transformer Engine); off as in Megatron-LM's default and llmctl's trainer.")
@click.option("--dp-comm-overlap/--no-dp-comm-overlap", default=None,
              help="The run reduces gradients beside the last micro-batch's backward (PyTorch DDP/FSDP, llmctl's "
                   "trainer, Megatron-Core --overlap-grad-reduce); off: after it (Megatron-LM's local DDP of 2021). "
                   "Default: the engine's way: beside it, except under --engine deepspeed (its ZeRO-1/2 "
                   "overlap_comm is off by default, and its pipeline engine reduces after the flush whatever "
                   "is asked).")
@click.option("--sequence-parallel/--no-sequence-parallel", default=True, show_default=True,
              help="Norms, dropout and residual adds split over the tensor-parallel group (Megatron "
                   "--sequence-parallel, llmctl's trainer with tp > 1); off: whole on every TP rank, in time "
                   "and activation memory.")
@click.option("--engine", type=click.Choice(["megatron", "deepspeed", "fsdp"]), default="megatron", show_default=True,
              help="The framework that runs the layout, where it changes a mechanism: megatron (Megatron-LM/Core, "
                   "and llmctl's pipeline and FSDP2: batched pipeline sends, interleaving; ZeRO-3 as FSDP), deepspeed "
                   "(its pipeline engine: 1F1B only, blocking sends one after another; its ZeRO buckets and ZeRO-3; "
                   "llmctl's trainer runs ZeRO through DeepSpeed when tp = pp = 1) or fsdp (PyTorch FSDP: one "
                   "gather per block, prefetched on its own stream).")
@click.option("--top", type=click.IntRange(min=0), default=3, show_default=True, help="Alternatives to keep.")
@click.option("--time-limit", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds the solver may take.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the plan (TOML) here.")
@click.option("--explain-error", is_flag=True,
              help="Also say which terms dominate the step time and how much a 1% error in each constant "
                   "of the cost model moves the prediction.")
@json_option
def compute(model_path, hardware, site, nodes, gpus_per_node, seq_len, global_batch, train_path, target_flops,
            max_memory_gb, max_comm_bw_gbps, peak_tflops, strategy, tp, pp, dp, cp, vpp, micro_batch,
            zero_stage, recompute, tp_across_nodes, precision, attention, tp_comm_overlap, dp_comm_overlap,
            sequence_parallel, engine, top, time_limit, out,
            explain_error, as_json) -> None:
    """Solve the parallelism plan as an integer linear program."""
    from llmctl.plan.api import Request, compute_plan
    from llmctl.plan.report import print_plan, write_plan
    from llmctl.plan.search import Fixed

    fixed = Fixed(tp=tp, cp=cp, pp=pp, dp=dp, vpp=vpp, mb=micro_batch, zero=zero_stage,
                  recompute=recompute, tp_across_nodes=tp_across_nodes)
    req = Request(model=model_path, hardware=hardware, site=site, nodes=nodes, gpus_per_node=gpus_per_node,
                  seq_len=seq_len, global_batch=global_batch, target_flops=target_flops,
                  max_memory_gb=max_memory_gb, max_comm_bw_gbps=max_comm_bw_gbps, peak_tflops=peak_tflops,
                  strategy=strategy, fixed=fixed, top=top, time_limit=time_limit, train=train_path,
                  attention=attention, precision=precision, tp_overlap=tp_comm_overlap,
                  dp_overlap=dp_comm_overlap, sequence_parallel=sequence_parallel, engine=engine)
    plan, outcome = compute_plan(req)
    sens = None
    if explain_error:
        from llmctl.plan.api import load_inputs
        from llmctl.plan.sensitivity import sensitivity

        _, cl, w = load_inputs(req)
        sens = sensitivity(w, cl, outcome.plans[0])
    if out:
        write_plan(plan, out)
    if as_json:
        from llmctl.cli.common import print_json

        print_json({**plan.to_data(), **({"explain_error": sens} if sens else {})})
    else:
        print_plan(plan)
        if sens:
            click.echo("\nwhat the prediction rests on (chosen layout)")
            click.echo("  dominant terms: " + ", ".join(f"{k} {v:.0%}" for k, v in sens["dominant"][:4]))
            click.echo("  step-time change per +1% in each constant (elasticity):")
            width = max(map(len, sens["elasticity"]))
            for k, v in sens["elasticity"].items():
                click.echo(f"    {k:{width}s}  {v:+.3f}")
        if out:
            click.echo(f"wrote {out}")


@group.command("explain")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--png", type=click.Path(dir_okay=False), help="Write the picture here.")
@json_option
def explain(plan_file, png, as_json) -> None:
    """Show a plan (PLAN_FILE) as tables and a picture."""
    from llmctl.config.base import load_config
    from llmctl.config.plan import PlanFile
    from llmctl.plan.report import print_plan, write_png

    from llmctl.errors import LlmctlError

    plan = load_config(plan_file, PlanFile)
    asked = png is not None
    png = png or str(plan_file).rsplit(".", 1)[0] + ".png"
    note = None
    if plan.predicted is None:
        png = None
    else:
        try:
            write_png(plan, png)
        except LlmctlError as e:
            if asked:  # a picture was asked for by name: failing to draw it is an error
                raise
            png, note = None, f"no picture: {e.message} ({e.hint})"
    if as_json:
        from llmctl.cli.common import print_json

        print_json({**plan.to_data(), "png": png})
    else:
        print_plan(plan)
        if png:
            click.echo(f"picture: {png}")
    if note:
        click.echo(note, err=True)


@group.command("calibrate")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--hardware", type=click.Path(dir_okay=False),
              help="Profile to calibrate (default: the one the first run's plan names).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the calibrated profile here.")
@click.option("--skip", type=click.IntRange(min=0), default=2, show_default=True,
              help="First steps of each run to leave out (start-up).")
@json_option
def calibrate(run_dirs, hardware, out, skip, as_json) -> None:
    """Fit the hardware profile's sustained rate from real runs' step times (RUN_DIRS: their run folders)."""
    from llmctl.cli.common import print_json
    from llmctl.plan.calibrate import calibrate as fit

    res = fit(list(run_dirs), hardware=hardware, out=out, skip=skip)
    if as_json:
        print_json(res)
        return
    for r in res["runs"]:
        click.echo(f"{r['run']}: predicted {r['predicted_step_s']:.4g} s/step, measured "
                   f"{r['measured_step_s']:.4g} s/step ({r['steps']} steps): x{r['predicted_over_measured']:.3f}")
    click.echo(f"factor (median): {res['factor']:.3f}")
    if res["key"]:
        click.echo(f"{res['hardware']}: measured.{res['key']} {res['old_tflops']:.4g} -> {res['new_tflops']:.4g} TFLOP/s")
    if res["written"]:
        click.echo(f"wrote {res['written']}")
    elif res["key"]:
        click.echo("(pass --out to write the calibrated profile)")
