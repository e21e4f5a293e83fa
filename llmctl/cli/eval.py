"""`llmctl eval`: evaluate checkpoints (issue #8)."""

from __future__ import annotations

import click


@click.group("eval")
def group() -> None:
    """Evaluate checkpoints on perplexity and task suites."""


@group.command("run")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint folder or file.")
@click.option("--suite", type=click.Path(dir_okay=False), help="Eval suite (TOML).")
@click.option("--tasks", help="Comma-separated tasks (a subset of the suite, or built-ins).")
@click.option("--output", type=click.Path(dir_okay=False), help="Results JSON.")
@click.option("--limit", type=click.IntRange(min=1), help="Documents per task.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size.")
@click.option("--log-samples", is_flag=True, help="Write per-sample logs.")
def run(checkpoint, suite, tasks, output, limit, batch_size, log_samples) -> None:
    """Evaluate one checkpoint.

    Without --suite, the built-in suite (held-out perplexity, code completion,
    arithmetic). Prints the harness's summary table; --output writes the results JSON
    (and with --log-samples one `<output>_samples_<task>.jsonl` per task).
    """
    from pathlib import Path

    from llmctl.eval.lm import CheckpointLM
    from llmctl.eval.runner import evaluate, summary_table, write_results
    from llmctl.eval.tasks import load_suite

    suite_cfg, task_list = load_suite(suite, tasks)  # bad task files fail before the model loads
    lm = CheckpointLM(checkpoint, batch_size=batch_size or suite_cfg.batch_size)
    results = evaluate(lm, suite_cfg, task_list, limit=limit, log_samples=log_samples)
    if output:
        for p in write_results(results, Path(output)):
            click.echo(f"wrote {p}", err=True)
    click.echo(f"{lm.name} (step {lm.step}), suite {suite_cfg.name}")
    click.echo(summary_table(results))


@group.command("watch")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Training run folder.")
@click.option("--suite", type=click.Path(dir_okay=False), help="Eval suite (TOML; default: the built-in suite).")
@click.option("--tasks", help="Comma-separated tasks (a subset of the suite, or built-ins).")
@click.option("--limit", type=click.IntRange(min=1), help="Documents per task.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size.")
@click.option("--submit", is_flag=True, help="Submit each evaluation as a job.")
@click.option("--launcher", type=click.Choice(["local", "slurm", "pbs"]), default="slurm", show_default=True,
              help="With --submit: where the eval jobs run.")
@click.option("--site", default=None, help="With --submit: site-config (name or path).")
def watch(run_dir, suite, tasks, limit, batch_size, submit, launcher, site) -> None:
    """Evaluate every complete checkpoint not yet evaluated (cron-safe).

    Results go to RUN/eval/: results/<checkpoint>.json, the table results.jsonl
    (one row per checkpoint) and metrics.png. Several watchers at once never
    evaluate a checkpoint twice; one killed mid-eval leaves nothing behind and the
    next run redoes that checkpoint.
    """
    from pathlib import Path

    from llmctl.eval import watch as W
    from llmctl.eval.tasks import load_suite

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    suite_cfg, task_list = load_suite(suite, tasks)
    if submit:
        from llmctl.jobs.launch import prepare_eval_job, submit_run

        def submit_one(key, ckpt, results_path, job_dir) -> str:
            rd, _ = prepare_eval_job(checkpoint=str(ckpt), suite=suite, output=str(results_path), tasks=tasks,
                                     launcher=launcher, site=site, name="eval", run_dir=str(job_dir),
                                     command=f"llmctl eval watch --run-dir {run_dir} --submit")
            return submit_run(rd.path)[1]

        out = W.watch_submit(run_dir, submit_one, log)
    else:
        from llmctl.eval.lm import CheckpointLM
        from llmctl.eval.runner import evaluate, write_results

        def evaluate_one(ckpt: Path, results_path: Path) -> dict:
            lm = CheckpointLM(ckpt, batch_size=batch_size or suite_cfg.batch_size)
            results = evaluate(lm, suite_cfg, task_list, limit=limit)
            write_results(dict(results), results_path)
            return results

        out = W.watch(run_dir, evaluate_one, log)
    click.echo(", ".join(f"{k}: {len(v)}" for k, v in out.items()))
    table = W.EvalDir(run_dir).table
    if table.is_file():
        click.echo(W.format_table(table))
        click.echo(f"results table: {table}")
    if out.get("failed"):
        from llmctl.errors import LlmctlError

        raise LlmctlError(f"{len(out['failed'])} checkpoint(s) failed: {', '.join(out['failed'])} "
                          "(see the messages above); the next run tries them again")


@group.command("schedule")
@click.option("--every", required=True, help="Interval, e.g. 1h.")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Training run folder.")
@click.option("--suite", type=click.Path(dir_okay=False), help="Eval suite (TOML).")
@click.option("--launcher", type=click.Choice(["slurm", "cron"]), default="cron", show_default=True)
@click.option("--time", "time_limit", default="01:00:00", show_default=True,
              help="slurm: time limit of each watcher job.")
@click.option("--partition", help="slurm: partition of the watcher job.")
@click.option("--install", is_flag=True, help="Install the entry with scrontab/crontab instead of printing it.")
def schedule(every, run_dir, suite, launcher, time_limit, partition, install) -> None:
    """Print or install a scrontab/crontab entry that runs the watcher."""
    from llmctl.eval import schedule as S

    if launcher == "slurm":
        entry = S.scrontab_entry(every, run_dir, suite, time_limit, partition)
        # SLURM cannot create the folder of --output: a job with a missing one fails unseen.
        S.log_dir(run_dir).mkdir(parents=True, exist_ok=True)
    else:
        entry = S.crontab_entry(every, run_dir, suite)
    if install:
        S.install(entry, launcher, run_dir)
        click.echo(f"installed in your {'scrontab' if launcher == 'slurm' else 'crontab'}:", err=True)
    click.echo(entry, nl=False)
