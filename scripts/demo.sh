#!/usr/bin/env bash
# The main job, end to end on the embedded default site (`local`: this machine,
# CPU, a tiny model). `make demo` runs it after creating the environment; each
# issue that lands extends it.
set -euo pipefail
LLMCTL=${LLMCTL:-llmctl}
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

step "demo finished: project in $DEMO_DIR/tiny-llama"
