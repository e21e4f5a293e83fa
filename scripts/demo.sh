#!/usr/bin/env bash
# The main job, end to end on the embedded default site (`local`: this machine,
# CPU, a tiny model). `make demo` runs it after creating the environment; each
# issue that lands extends it.
set -euo pipefail
LLMCTL=${LLMCTL:-llmctl}
PY=${PY:-python3}   # a Python with the openai client (the venv's)
DEMO_DIR=${DEMO_DIR:-demo}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "llmctl env (versions, paths, hardware)"
"$LLMCTL" env

step "scaffold a tiny llama project in $DEMO_DIR/"
mkdir -p "$DEMO_DIR"
"$LLMCTL" init scaffold --template llama --size tiny --name tiny-llama --output-dir "$DEMO_DIR" --site local --force
cd "$DEMO_DIR/tiny-llama"

step "check the site-config the project runs on"
"$LLMCTL" site check local
"$LLMCTL" site list

step "validate the project's configs against their schemas"
"$LLMCTL" schema model --check configs/models/llama-tiny.json
"$LLMCTL" schema train --check configs/train.toml
"$LLMCTL" schema data --check configs/data/example.toml
"$LLMCTL" schema eval-suite --check configs/eval/lm-eval-harness.toml
"$LLMCTL" schema hardware --check configs/hw/a100x8.toml

step "probe this machine into a hardware profile"
"$LLMCTL" hw probe --emit configs/hw/local.toml

step "plan the parallel layout (an ILP over the cost model)"
"$LLMCTL" plan compute --model configs/models/llama-tiny.json --hardware configs/hw/local.toml \
  --train configs/train.toml --out plans/local.toml
"$LLMCTL" plan explain plans/local.toml --png plans/local.png

step "tokenize the default corpus (the Python standard library's source) into HDF5 shards"
"$LLMCTL" data prepare --config configs/data/example.toml

step "render the job script, then run it on the local site"
rm -rf runs/demo
"$LLMCTL" train launch --plan plans/local.toml --config configs/train.toml --data configs/data/example.toml \
  --launcher local --site local --run-dir runs/demo --dry-run >/dev/null
echo "reviewed script: runs/demo/job.sh"
"$LLMCTL" job submit runs/demo
"$LLMCTL" job logs --follow runs/demo
"$LLMCTL" job status runs/demo

step "evaluate each checkpoint once (the cron-safe watcher) and show the results table"
"$LLMCTL" eval watch --run-dir runs/demo --suite configs/eval/lm-eval-harness.toml \
  --tasks stdlib_perplexity,code_completion --limit 100
echo "to run the watcher every hour as a SLURM job (scrontab):"
"$LLMCTL" eval schedule --every 1h --run-dir runs/demo --suite configs/eval/lm-eval-harness.toml --launcher slurm

step "export the trained model as a Hugging Face folder"
rm -rf artifacts/demo
"$LLMCTL" export --checkpoint runs/demo --out artifacts/demo --dtype fp32

step "serve it (OpenAI-compatible HTTP on 127.0.0.1), ask it through the openai client, stop it"
PORT=${LLMCTL_DEMO_PORT:-8765}
"$LLMCTL" serve start --artifact artifacts/demo --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
"$PY" - "$PORT" <<'PYCODE'
import sys, time, urllib.request
from openai import OpenAI

port = sys.argv[1]
for _ in range(150):  # wait for /health (model load takes a few seconds)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        break
    except OSError:
        time.sleep(0.2)
client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
prompt = "def main():\n    "
reply = client.completions.create(model="demo", prompt=prompt, max_tokens=40, temperature=0)
print("prompt:", repr(prompt))
print("model:  ", repr(reply.choices[0].text))
PYCODE
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
trap - EXIT

step "demo finished: project in $DEMO_DIR/tiny-llama, run in $DEMO_DIR/tiny-llama/runs/demo (loss curve: loss.png; eval table: runs/demo/eval/)"
