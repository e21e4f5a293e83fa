"""Evaluation (issue #8): perplexity and task suites on checkpoints, harness-shaped results.

    tasks.py     task and suite files (TOML/YAML), built-in tasks, prompts
    lm.py        a checkpoint as a model to score (loglikelihood, rolling loss, greedy)
    metrics.py   aggregation and bootstrap standard errors
    runner.py    run a suite, build lm-evaluation-harness-shaped results
    watch.py     the cron-safe watcher: each complete checkpoint evaluated exactly once
    schedule.py  scrontab / crontab entries that run the watcher
    builtin/     the built-in suite and its small local JSONL datasets
"""
