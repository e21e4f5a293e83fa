"""Each command's examples and the stable shape of its `--json` output, kept in one map.

`apply(cli)` turns them into each command's help epilog ("Examples:" and, for a command
with `--json`, "JSON output:"), so `--help` and docs/cli-reference.md (generated from it)
show them; tests/unit/test_cli_help.py checks that every command has an example, that each
example parses, and that each `--json` prints the keys documented here.
"""

from __future__ import annotations

from typing import Any

# "group verb" -> example command lines (each starts with `llmctl `).
EXAMPLES: dict[str, list[str]] = {
    "init scaffold": ["llmctl init scaffold --template llama --size tiny --name demo",
                      "llmctl init scaffold --template llama --size 7b --name exp --site slurm-a100-ib"],
    "hw probe": ["llmctl hw probe --emit configs/hw/local.toml",
                 "llmctl hw probe --site slurm-a100-ib --nodes 4 --emit configs/hw/cluster.toml"],
    "hw benchmark": ["llmctl hw benchmark --component compute --duration 5 --json"],
    "plan compute": ["llmctl plan compute --model configs/models/llama-7b.json --hardware configs/hw/cluster.toml "
                     "--train configs/train.toml --out plans/cluster.toml",
                     "llmctl plan compute --model configs/models/llama-7b.json --site slurm-a100-ib --nodes 2 "
                     "--strategy manual --tp 8 --pp 2 --micro-batch 1 --global-batch 512"],
    "plan explain": ["llmctl plan explain plans/cluster.toml --png plans/cluster.png"],
    "plan calibrate": ["llmctl plan calibrate runs/train-A runs/train-B --hardware configs/hw/cluster.toml "
                       "--out configs/hw/cluster-calibrated.toml"],
    "data prepare": ["llmctl data prepare --config configs/data/example.toml --workers 4"],
    "train launch": ["llmctl train launch --plan plans/local.toml --data configs/data/example.toml --dry-run",
                     "llmctl train launch --plan plans/cluster.toml --config configs/train.toml "
                     "--launcher slurm --site slurm-a100-ib --time 04:00:00 --json"],
    "eval run": ["llmctl eval run --checkpoint runs/train-20260101-120000 --output eval/results.json",
                 "llmctl eval run --artifact artifacts/demo --tasks arithmetic --limit 20 --json"],
    "eval watch": ["llmctl eval watch --run-dir runs/train-20260101-120000 --submit --site slurm-a100-ib",
                   "llmctl eval watch --run-dir runs/train-20260101-120000 --tasks arithmetic --json"],
    "eval schedule": ["llmctl eval schedule --every 6h --run-dir runs/train-20260101-120000",
                      "llmctl eval schedule --every 1h --run-dir runs/train-20260101-120000 --launcher slurm "
                      "--install --json"],
    "export": ["llmctl export --checkpoint runs/train-20260101-120000 --out artifacts/demo --dtype bf16",
               "llmctl export --artifact hf/Llama-3.2-1B --out artifacts/llama3-1b --json"],
    "serve start": ["llmctl serve start --artifact artifacts/demo --port 8080",
                    "llmctl serve start --artifact artifacts/demo --config configs/serve.toml --max-batch-tokens 4096"],
    "serve batch": ["llmctl serve batch --artifact artifacts/demo --input requests.jsonl --output results.jsonl"],
    "serve launch": ["llmctl serve launch --artifact artifacts/demo --launcher slurm --site slurm-a100-ib --dry-run",
                     "llmctl serve launch --kind batch --artifact artifacts/demo --input requests.jsonl "
                     "--output results.jsonl --json"],
    "job submit": ["llmctl job submit runs/train-20260101-120000 --json"],
    "job status": ["llmctl job status runs/train-20260101-120000", "llmctl job status --all --json"],
    "job logs": ["llmctl job logs runs/train-20260101-120000 --follow"],
    "job cancel": ["llmctl job cancel runs/train-20260101-120000 --wait 60"],
    "job list": ["llmctl job list", "llmctl job list --all --json"],
    "site list": ["llmctl site list --json"],
    "site show": ["llmctl site show slurm-a100-ib"],
    "site check": ["llmctl site check site-configs/mycluster.toml"],
    "site init": ["llmctl site init --scheduler slurm --name mycluster --output site-configs/mycluster.toml",
                  "llmctl site init --output site-configs/mycluster.toml --json"],
    "env": ["llmctl env --json"],
    "schema": ["llmctl schema train", "llmctl schema train --check configs/train.toml"],
    "doctor": ["llmctl doctor --site slurm-a100-ib --no-job"],
    "completion": ["llmctl completion bash"],
}

# "group verb" -> (what --json prints, its top-level keys). A key may be added in a later
# version; none is removed or renamed without a note in the changelog.
JSON_SHAPES: dict[str, tuple[str, list[str]]] = {
    "init scaffold": ("an object", ["project_dir", "files", "model", "site", "next_steps"]),
    "hw probe": ("an object: the hardware profile (with --emit: {written: FILE, profile: the profile})",
                 ["gpu", "interconnect", "limits", "node", "probe", "notes"]),
    "hw benchmark": ("an object (with --emit, also written: FILE)", ["measured", "details"]),
    "plan compute": ("an object (the plan file)", ["version", "inputs", "parallelism", "predicted", "alternatives",
                                                "solver"]),
    "plan explain": ("an object (the plan file, and the picture's path)", ["version", "inputs", "parallelism",
                                                                        "predicted", "png"]),
    "plan calibrate": ("an object (written: the calibrated profile, null without --out)",
                       ["runs", "factor", "hardware", "key", "old_tflops", "new_tflops", "written"]),
    "data prepare": ("an object", ["output", "up_to_date", "name", "tokens", "documents", "shards", "vocab_size",
                                "dtype", "tokenizer_sha256", "seconds", "tokens_per_s"]),
    "train launch": ("an object", ["run_dir", "backend", "dry_run", "job_id", "script", "resolved"]),
    "eval run": ("an object (the results file, without the samples: lm-evaluation-harness's layout, its "
                 "keys that mean nothing for llmctl null; with --harness-tasks, what lm-evaluation-harness "
                 "returns)",
                 ["results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
                  "config", "git_hash", "date", "pretty_env_info", "transformers_version", "upper_git_hash",
                  "tokenizer_pad_token", "tokenizer_eos_token", "tokenizer_bos_token", "eot_token_id",
                  "max_length", "task_hashes", "model_source", "model_name", "model_name_sanitized",
                  "system_instruction", "system_instruction_sha", "fewshot_as_multiturn", "chat_template",
                  "chat_template_sha", "start_time", "end_time", "total_evaluation_time_seconds"]),
    "eval watch": ("an object (the checkpoints by what happened to them, each a list, empty where it does not "
                   "apply; table and plot: RUN/eval/results.jsonl and metrics.png, null until written; rows: "
                   "the table's rows)", ["run_dir", "evaluated", "skipped", "busy", "failed", "submitted",
                                         "pending", "table", "plot", "rows"]),
    "eval schedule": ("an object (entry: the crontab or scrontab lines, or slurm-chain's script; installed: "
                      "whether --install installed it; script and job_id: an installed slurm-chain's, else null)",
                      ["launcher", "every", "run_dir", "entry", "installed", "script", "job_id"]),
    "export": ("an object", ["direction", "source", "artifact", "format", "dtype", "quantize"]),
    "serve batch": ("an object", ["output", "counts"]),
    "serve launch": ("an object", ["run_dir", "backend", "dry_run", "job_id", "script", "resolved"]),
    "job submit": ("an object", ["run_dir", "backend", "job_id"]),
    "job status": ("an object (with RUN; without: a list of them)", ["job_id", "backend", "state", "run_dir"]),
    "job cancel": ("an object", ["job_id", "backend", "state", "cancel"]),
    "job list": ("a list of objects", ["job_id", "backend", "name", "run_dir"]),
    "site list": ("a list of objects", ["name", "origin", "path", "scheduler", "description", "shadowed"]),
    "site show": ("an object", ["path", "site"]),
    "site check": ("an object", ["name", "path", "ok", "summary", "warnings"]),
    "site init": ("an object (text: the draft; written: its file, null without --output)",
                  ["scheduler", "cluster", "name", "partitions", "written", "text"]),
    "env": ("an object", ["llmctl", "python", "executable", "platform", "packages", "tools", "paths"]),
    "doctor": ("an object", ["site", "ok", "checks"]),
}

# The commands without --json, and why: they produce no result to print as JSON.
NO_JSON: dict[str, str] = {
    "serve start": "a server: it answers HTTP until stopped (in a job, its address is in RUN/endpoint.json)",
    "job logs": "the job's log, as the program wrote it",
    "completion": "a shell script",
    "schema": "JSON already (the JSON Schema of KIND); --check prints one line per valid file and exits 2 "
              "on an invalid one",
}


def epilog(path: str) -> str:
    """The help epilog of command `path`: its examples, then its --json shape."""
    lines = ["\b", "Examples:"] + [f"  {e}" for e in EXAMPLES.get(path, [])]
    if path in JSON_SHAPES:
        what, keys = JSON_SHAPES[path]
        lines += ["", f"--json prints {what} with the keys: {', '.join(keys)}."]
    elif path in NO_JSON:
        lines += ["", f"No --json: it prints {NO_JSON[path]}."]
    return "\n".join(lines)


def apply(cli: Any) -> None:
    """Set every leaf command's epilog from the maps above."""
    import click

    def walk(cmd: Any, path: list[str]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
        elif " ".join(path) in EXAMPLES:
            cmd.epilog = epilog(" ".join(path))

    walk(cli, [])
