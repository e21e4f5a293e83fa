#!/usr/bin/env bash
# gpu-check: measure this node (GPU, or --cpu with tiny shapes) against reference
# implementations in one run; writes gpu-check.json and gpu-check.txt into $OUT (when set)
# or ./gpu-check-out, within 8 minutes on one H100. No arguments needed:
#
#   scripts/gpu-check.sh            # or: make gpu-check
#   scripts/gpu-check.sh --cpu      # or: make gpu-check ARGS=--cpu (what CI runs)
#
# llmctl runs from this checkout (PYTHONPATH), not installed. A device machine has torch,
# nvidia-ml-py, h5py, jinja2 and mpi4py; what llmctl needs beyond them (pydantic, the
# planner's pulp/highspy, transformers for the serving reference) comes from wheels in
# ./gpu-check-wheels (`make gpu-check-wheels` fills it; $LLMCTL_WHEELS names another
# folder), installed into a virtual environment over the system's packages under the
# output folder. A package still missing shows as a section skipped or failed with the
# reason in the report; nothing else is lost. Python: $PYTHON, else .venv/bin/python when
# present, else python3.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=$(command -v python3); fi
fi
OUT_DIR=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Which of llmctl's own needs are missing here (module names, then their distributions).
missing=$("$PY" - <<'PYEOF'
import importlib.util, sys
need = {"pydantic": "pydantic", "tomli_w": "tomli-w", "pulp": "pulp", "highspy": "highspy",
        "transformers": "transformers"}
if sys.version_info < (3, 11):
    need["tomli"] = "tomli"
print(" ".join(d for m, d in need.items() if importlib.util.find_spec(m) is None))
PYEOF
)
WHEELS=${LLMCTL_WHEELS:-$ROOT/gpu-check-wheels}
if [ -n "$missing" ]; then
  if [ -d "$WHEELS" ]; then
    echo "gpu-check: installing $missing from $WHEELS" >&2
    VENV="$OUT_DIR/.venv"
    # --system-site-packages: the machine's torch, numpy and CUDA libraries stay the ones used.
    if "$PY" -m venv --system-site-packages "$VENV" >&2 \
       && "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" $missing >&2; then
      PY=$VENV/bin/python
    else
      echo "gpu-check: could not install $missing from $WHEELS; the sections that need them will say so" >&2
    fi
  else
    echo "gpu-check: missing here: $missing (no $WHEELS: \`make gpu-check-wheels\` prepares it); the sections that need them will say so" >&2
  fi
fi
exec "$PY" -m llmctl.gpucheck --out "$OUT_DIR" "$@"
