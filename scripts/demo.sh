#!/usr/bin/env bash
# The main job: build the synthetic dataset (if missing), train CLIP's demo config, then run the
# zero-shot and retrieval evaluations on the final checkpoint. Re-running resumes / re-evaluates.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
WORKDIR="${WORKDIR:-runs/clip_demo}"
PY=.venv/bin/python
$PY -m data_prep.synthetic_medical --data_dir data/tfds --config default
$PY -m medclip_jax.main --config configs/clip.py:demo --workdir "$WORKDIR" "$@"
$PY -m evals.zero_shot --workdir "$WORKDIR" --config configs/eval.py:demo
$PY -m evals.retrieval --workdir "$WORKDIR" --config configs/eval.py:demo
