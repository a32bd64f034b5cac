#!/usr/bin/env bash
# Every method's demo preset on the synthetic dataset, each through both eval binaries, then one
# summary table (scripts/summarize_runs.py). Usage:
#   scripts/demo_methods.sh [methods...]          # default: python -m medclip_jax.methods --configs
#   EPOCHS=3 scripts/demo_methods.sh slip declip  # shorter runs
# Runs go to runs/<method>_demo (re-running resumes / re-evaluates).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
EPOCHS="${EPOCHS:-10}"
METHODS=("$@")
if [ ${#METHODS[@]} -eq 0 ]; then  # every config file of the method registry (lit included)
  CONFIGS="$($PY -m medclip_jax.methods --configs)"
  read -r -a METHODS <<< "$CONFIGS"
fi
[ -d data/tfds/synthetic_medical/default ] || \
  $PY -m data_prep.synthetic_medical --data_dir data/tfds --config default
WORKDIRS=()
for method in "${METHODS[@]}"; do
  workdir="runs/${method}_demo"
  echo "=== $method -> $workdir"
  $PY -m medclip_jax.main --config "configs/${method}.py:demo" --workdir "$workdir" \
      --config.num_epochs="$EPOCHS"
  $PY -m evals.zero_shot --workdir "$workdir" --config configs/eval.py:demo
  $PY -m evals.retrieval --workdir "$workdir" --config configs/eval.py:demo
  WORKDIRS+=("$workdir")
done
$PY scripts/summarize_runs.py "${WORKDIRS[@]}"
