"""`llmctl eval`: evaluate checkpoints (issue #8)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, print_json, settings_options


@click.group("eval")
def group() -> None:
    """Evaluate checkpoints on perplexity and task suites."""


@group.command("run")
@click.option("--checkpoint", type=click.Path(), help="Checkpoint folder (or a run: its latest).")
@click.option("--artifact", type=click.Path(), help="Exported Hugging Face folder (`llmctl export`) instead.")
@click.option("--endpoint", help="OpenAI-compatible base URL (http://HOST:PORT/v1) instead.")
@click.option("--tokenizer", type=click.Path(), help="With --endpoint: the artifact or Hugging Face folder the "
              "server loaded (its tokenizer.json and config.json).")
@click.option("--served-model", help="With --endpoint: the model name to request (default: the first listed).")
@click.option("--api-key-env", help="With --endpoint: environment variable holding the API key.")
@click.option("--suite", type=click.Path(dir_okay=False), help="Eval suite (TOML).")
@click.option("--tasks", help="Comma-separated tasks (a subset of the suite, or built-ins).")
@click.option("--output", type=click.Path(dir_okay=False), help="Results JSON.")
@click.option("--limit", type=click.IntRange(min=1), help="Documents per task.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (requests in flight for --endpoint).")
@click.option("--log-samples", is_flag=True, help="Write per-sample logs.")
@click.option("--harness-tasks", help="Comma-separated lm-evaluation-harness tasks instead of a suite "
              "(needs `pip install lm-eval`).")
@click.option("--harness-include", type=click.Path(file_okay=False),
              help="With --harness-tasks: a folder of local harness task YAMLs.")
@click.option("--skip-verify", is_flag=True,
              help="With --checkpoint: load it even if its files do not match the digests in its state.json.")
@json_option
def run(checkpoint, artifact, endpoint, tokenizer, served_model, api_key_env, suite, tasks, output, limit,
        batch_size, log_samples, harness_tasks, harness_include, skip_verify, as_json) -> None:
    """Evaluate one checkpoint, exported artifact or served endpoint.

    Exactly one of --checkpoint, --artifact, --endpoint. Without --suite, the
    built-in suite (held-out perplexity, code completion, arithmetic). Prints the
    harness's summary table; --output writes the results JSON (and with
    --log-samples one `<output>_samples_<task>.jsonl` per task). With
    --harness-tasks, lm-evaluation-harness runs its own tasks on the model.
    """
    from pathlib import Path

    from llmctl.eval.backends import open_model
    from llmctl.eval.runner import evaluate, summary_table, write_results
    from llmctl.eval.tasks import load_suite

    if harness_tasks or harness_include:
        return _run_harness(harness_tasks, harness_include, suite, tasks, output, limit, log_samples, as_json,
                            lambda size: open_model(checkpoint, artifact, endpoint, tokenizer, served_model,
                                                    api_key_env, batch_size or size, verify=not skip_verify))

    suite_cfg, task_list = load_suite(suite, tasks)  # bad task files fail before the model loads
    from llmctl.track import evalrun

    evalrun.check(suite_cfg)  # a tracker's missing package, too
    lm = open_model(checkpoint, artifact, endpoint, tokenizer, served_model, api_key_env,
                    batch_size or suite_cfg.batch_size,
                    need_logprobs=any(t.cfg.output_type != "generate_until" for t in task_list),
                    verify=not skip_verify)
    results = evaluate(lm, suite_cfg, task_list, limit=limit, log_samples=log_samples)
    if output:
        for p in write_results(results, Path(output)):
            click.echo(f"wrote {p}", err=True)
    if as_json:
        print_json({k: v for k, v in results.items() if k != "samples"})
    else:
        click.echo(f"{lm.name}" + (f" (step {lm.step})" if lm.step is not None else "") + f", suite {suite_cfg.name}")
        click.echo(summary_table(results))
    base = Path(output).parent if output else Path.cwd()
    tracked = evalrun.log_results(suite_cfg, results, base, f"{lm.name}-eval", f"{base.absolute()}:eval:{lm.name}",
                                  lm.step, files=(Path(output),) if output else ())
    if tracked:
        click.echo(f"tracking: {', '.join(suite_cfg.tracking.backends)} in {tracked}", err=True)


def _run_harness(names, include, suite, tasks, output, limit, log_samples, as_json, open_lm) -> None:
    from pathlib import Path

    from llmctl.errors import LlmctlError
    from llmctl.eval import harness
    from llmctl.eval.runner import write_results

    if not names:
        raise LlmctlError("--harness-include: only with --harness-tasks")
    if suite or tasks:
        raise LlmctlError("--harness-tasks runs lm-evaluation-harness tasks; it does not combine with "
                          "--suite or --tasks")
    harness.require_lm_eval()  # before the model loads
    task_names = [t.strip() for t in names.split(",") if t.strip()]
    lm = open_lm(8)
    results = harness.evaluate(lm, task_names, include, limit=limit, log_samples=log_samples)
    if output:
        for p in write_results(results, Path(output)):
            click.echo(f"wrote {p}", err=True)
    if as_json:
        print_json({k: v for k, v in results.items() if k != "samples"})
        return
    click.echo(f"{lm.name}, lm-evaluation-harness tasks {', '.join(task_names)}")
    click.echo(harness.table(results))


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
@click.option("--partition", help="With --submit: partition or queue (default: the site's).")
@click.option("--time", "time_limit", help="With --submit: time limit, e.g. 01:00:00.")
@settings_options
@json_option
def watch(run_dir, suite, tasks, limit, batch_size, submit, launcher, site, partition, time_limit,
          settings, as_json) -> None:
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
    from llmctl.track import evalrun

    evalrun.check(suite_cfg)
    if submit:
        from llmctl.jobs.launch import prepare_eval_job, submit_run

        def submit_one(key, ckpt, results_path, job_dir) -> str:
            rd, _ = prepare_eval_job(checkpoint=str(ckpt), suite=suite, output=str(results_path), tasks=tasks,
                                     launcher=launcher, site=site, name="eval", run_dir=str(job_dir),
                                     partition=partition, time_limit=time_limit, settings=settings,
                                     limit=limit, batch_size=batch_size,
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
            run = Path(run_dir).absolute()
            evalrun.log_results(suite_cfg, results, run, f"{run.name}-eval", f"{run}:eval",
                                results["config"].get("step"), files=(results_path,))
            return results

        out = W.watch(run_dir, evaluate_one, log)
    ed = W.EvalDir(run_dir)
    if as_json:  # every list present (empty when it does not apply), so the shape is one
        lists = {k: out.get(k, []) for k in ("evaluated", "skipped", "busy", "failed", "submitted", "pending")}
        print_json({"run_dir": str(ed.run), **lists,
                    "table": str(ed.table) if ed.table.is_file() else None,
                    "plot": str(ed.plot) if ed.plot.is_file() else None,
                    "rows": W.read_table(ed.table) if ed.table.is_file() else []})
    else:
        click.echo(", ".join(f"{k}: {len(v)}" for k, v in out.items()))
        if ed.table.is_file():
            click.echo(W.format_table(ed.table))
            click.echo(f"results table: {ed.table}")
        if ed.plot.is_file():
            click.echo(f"plot (each metric against the step, ± standard error): {ed.plot}")
    if out.get("failed"):
        from llmctl.errors import LlmctlError

        raise LlmctlError(f"{len(out['failed'])} checkpoint(s) failed: {', '.join(out['failed'])} "
                          "(see the messages above); the next run tries them again")


@group.command("schedule")
@click.option("--every", required=True, help="Interval, e.g. 1h (slurm-chain also takes seconds: 30s).")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Training run folder.")
@click.option("--suite", type=click.Path(dir_okay=False), help="Eval suite (TOML).")
@click.option("--launcher", type=click.Choice(["slurm", "slurm-chain", "cron"]), default="cron", show_default=True,
              help="slurm: a scrontab entry; slurm-chain: a job that requeues itself (SLURM without "
                   "scrontab); cron: a crontab line.")
@click.option("--time", "time_limit", default="01:00:00", show_default=True,
              help="slurm: time limit of each watcher job.")
@click.option("--partition", help="slurm: partition of the watcher job.")
@click.option("--install", is_flag=True,
              help="Install the entry with scrontab/crontab (slurm-chain: write RUN/eval/schedule-slurm.sh "
                   "and queue it) instead of printing it.")
@json_option
def schedule(every, run_dir, suite, launcher, time_limit, partition, install, as_json) -> None:
    """Print or install a scrontab/crontab entry that runs the watcher."""
    from pathlib import Path

    from llmctl.eval import schedule as S

    def result(entry: str, installed: bool, script=None, job_id=None) -> None:
        if as_json:
            print_json({"launcher": launcher, "every": every, "run_dir": str(Path(run_dir).absolute()),
                        "entry": entry, "installed": installed, "script": script and str(script),
                        "job_id": job_id})
        elif not installed or launcher != "slurm-chain":
            click.echo(entry, nl=False)

    if launcher == "slurm-chain":
        text = S.chain_script(every, run_dir, suite, time_limit, partition)
        if install:
            job = S.install_chain(text, run_dir)
            script, stop = S.chain_paths(run_dir)
            click.echo(f"wrote {script}; " + (f"queued job {job}" if job else "a run is already queued")
                       + f"; stop the chain with: touch {stop}", err=True)
            return result(text, True, script, job)
        return result(text, False)
    if launcher == "slurm":
        entry = S.scrontab_entry(every, run_dir, suite, time_limit, partition)
        # SLURM cannot create the folder of --output: a job with a missing one fails unseen.
        S.log_dir(run_dir).mkdir(parents=True, exist_ok=True)
    else:
        entry = S.crontab_entry(every, run_dir, suite)
    if install:
        S.install(entry, launcher, run_dir)
        click.echo(f"installed in your {'scrontab' if launcher == 'slurm' else 'crontab'}:", err=True)
    result(entry, install)
