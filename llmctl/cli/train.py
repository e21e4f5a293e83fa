"""`llmctl train`: render and launch training jobs (issue #5)."""

from __future__ import annotations

import shlex
import sys

import click

from llmctl.cli.common import job_options, json_option, report


@click.group("train")
def group() -> None:
    """Launch distributed training."""


@group.command("launch")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan file.")
@click.option("--config", "config_paths", multiple=True, type=click.Path(dir_okay=False),
              help="Training config (TOML). Repeat it for a job array: one task per config. Default: "
                   "the project's configs/train.toml when run in a scaffolded project (`llmctl init "
                   "scaffold`), else one made from the plan and llmctl's defaults.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), help="Data config (TOML).")
@job_options
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes.")
@click.option("--gpus-per-node", type=click.IntRange(min=0), help="GPUs per node.")
@click.option("--array-parallel", type=click.IntRange(min=1), help="Most array tasks running at once.")
@click.option("--debug-env", is_flag=True, help="Add the site's debug environment (e.g. NCCL_DEBUG).")
@click.option("--eval-after", is_flag=True,
              help="Also submit an eval job (latest checkpoint) that starts when training succeeds (afterok).")
@click.option("--eval-suite", type=click.Path(dir_okay=False), help="With --eval-after: eval suite (default: built-in).")
@json_option
def launch(plan_path, config_paths, data_path, launcher, site, partition, nodes, gpus_per_node,
           time_limit, name, after, array_parallel, debug_env, run_dir, dry_run, eval_after, eval_suite,
           settings, as_json=False) -> None:
    """Render the job script for a plan and submit it."""
    from llmctl.jobs.launch import prepare_train_job, submit_run

    if eval_after and launcher not in ("slurm", "pbs"):
        from llmctl.errors import LlmctlError

        raise LlmctlError(f"--eval-after needs a scheduler with job dependencies (slurm, pbs), not {launcher}",
                          hint="run `llmctl eval run --checkpoint RUN` when the job has finished")
    if eval_after and dry_run:
        from llmctl.errors import LlmctlError

        raise LlmctlError("--eval-after needs the training job's id: it cannot be combined with --dry-run")
    if eval_after and as_json:
        from llmctl.errors import LlmctlError

        raise LlmctlError("--json prints one job's result; --eval-after submits two",
                          hint="submit the eval job with `llmctl eval watch --submit`, or drop --json")
    run, dry = prepare_train_job(
        plan_path=plan_path, config_paths=config_paths, data_path=data_path, launcher=launcher,
        site=site, nodes=nodes, gpus_per_node=gpus_per_node, time_limit=time_limit, name=name,
        after=after, partition=partition, debug_env=debug_env, run_dir=run_dir,
        array_parallel=array_parallel, command=shlex.join(["llmctl", *sys.argv[1:]]), settings=settings)
    report(run, dry, dry_run, submit_run, as_json)
    if eval_after:
        _submit_eval_after(run, launcher, site, partition, eval_suite, settings)


def _submit_eval_after(run, launcher, site, partition, suite, settings=None) -> None:
    """An eval job on the run's latest checkpoint, started only if training succeeds (#8)."""
    from llmctl.jobs.launch import prepare_eval_job, submit_run

    job_id = (run.submission() or {}).get("job_id")
    eval_run, _ = prepare_eval_job(checkpoint=str(run.path), suite=suite,
                                   output=str(run.path / "eval" / "final.json"), launcher=launcher, site=site,
                                   name="eval", after=[str(job_id)], partition=partition,
                                   run_dir=str(run.path.parent / f"{run.path.name}-eval"),
                                   command=shlex.join(["llmctl", *sys.argv[1:]]), settings=settings)
    _, eval_id = submit_run(eval_run.path)
    click.echo(f"submitted {launcher} eval job {eval_id} (after {job_id}): {eval_run.path}")
