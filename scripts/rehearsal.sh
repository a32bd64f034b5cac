#!/usr/bin/env bash
# The whole benchmark, end to end, on miniature releases in every publisher's layout:
#   1. data_prep.fixtures writes a tiny raw release of every dataset family (bad items included);
#   2. data_prep.build all converts every one of them;
#   3. two methods train a few steps on the paper's four-corpus mixture (`:size` weights,
#      caption_field=captions) at the tiny model's scale (configs/<method>.py:rehearsal);
#   4. evals/run_suite.py runs the paper's 25 tasks (+ MIMIC-CXR's multi-label task) on each
#      checkpoint, strict: a skipped or failed task fails the script;
#   5. evals/report.py writes the benchmark report and fails on any gap in it.
# OUT (default runs/rehearsal) is wiped first; METHODS (default "clip siglip") picks the methods.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
OUT="${OUT:-runs/rehearsal}"
METHODS="${METHODS:-clip siglip}"
PY=.venv/bin/python
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

start=$(date +%s)
stamp() { echo "[rehearsal] $1 ($(( $(date +%s) - start )) s)"; }
rm -rf "$OUT"
$PY -m data_prep.fixtures --out "$OUT/raw" --planted "$OUT/planted.json"
stamp "fixtures written"
$PY -m data_prep.build all --manual_dir "$OUT/raw" --data_dir "$OUT/tfds" --max_image_side 48 \
    --workers 1
stamp "every dataset built"

# The methods train and are evaluated one after another: same-sized models embed with the
# same programs, so the second chain reads the first's compiled evaluation steps from the
# persistent compilation cache (side by side, both compiled them: ~35% more CPU, no faster
# on two cores).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$OUT/compilation_cache}"
train_and_evaluate() {
  local method="$1"
  $PY -m medclip_jax.main --config "configs/$method.py:rehearsal" --workdir "$OUT/$method" \
      --config.data.data_dir="$OUT/tfds" &&
  $PY -m evals.run_suite --workdir "$OUT/$method" --config configs/eval.py:rehearsal
}
read -r -a methods <<< "$METHODS"
results=()
failed=0
for method in "${methods[@]}"; do
  results+=(--results "$OUT/$method")
  if train_and_evaluate "$method" > "$OUT/$method.log" 2>&1; then
    stamp "$method trained and evaluated ($OUT/$method.log)"
  else
    tail -n 40 "$OUT/$method.log"
    stamp "$method FAILED (log: $OUT/$method.log)"
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
$PY -m evals.report "${results[@]}" --output_dir "$OUT/report" --require_complete
cat "$OUT/report/report.md"
stamp "report complete: $OUT/report/report.md"
