#!/usr/bin/env bash
# Duplicate-caption-aware targets on the demo: CLIP's demo config trained with
# config.loss.duplicate_captions off and on, for two seeds, one training at a time:
#   $ROOT/off_seed0  $ROOT/on_seed0  $ROOT/off_seed1  $ROOT/on_seed1
# each followed by zero-shot classification and retrieval (as scripts/demo.sh), then one
# markdown table of every run and the per-option means.
#
#   scripts/duplicate_captions_demo.sh [--config.<field>=<value> ...]   # extra args: every run
#   ROOT=/tmp/dup_runs DATA_DIR=/tmp/dup_runs/tfds scripts/duplicate_captions_demo.sh
#
# Re-running resumes / re-evaluates (the table reads each run's latest eval JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
ROOT="${ROOT:-runs/duplicate_captions}"
DATA_DIR="${DATA_DIR:-data/tfds}"
SEEDS="${SEEDS:-0 1}"
PY=.venv/bin/python
if [ ! -f "$DATA_DIR/synthetic_medical/default/1.0.0/dataset_info.json" ]; then
  $PY -m data_prep.synthetic_medical --data_dir "$DATA_DIR" --config default
fi

runs=()
for seed in $SEEDS; do
  for option in off on; do
    name="${option}_seed${seed}"
    duplicates=$([ "$option" = on ] && echo True || echo False)
    runs+=("$name")
    mkdir -p "$ROOT/$name"
    start=$(date +%s)
    $PY -m medclip_jax.main --config configs/clip.py:demo --workdir "$ROOT/$name" \
      --config.data.data_dir="$DATA_DIR" --config.seed="$seed" \
      --config.loss.duplicate_captions="$duplicates" "$@"
    echo "$(( $(date +%s) - start ))" > "$ROOT/$name/train_wall_s.txt"
    $PY -m evals.zero_shot --workdir "$ROOT/$name" --config configs/eval.py:demo
    $PY -m evals.retrieval --workdir "$ROOT/$name" --config configs/eval.py:demo
  done
done

$PY - "$ROOT" "${runs[@]}" <<'EOF'
import glob, json, os, re, statistics, sys

root, runs = sys.argv[1], sys.argv[2:]


def latest(workdir, name):
    paths = glob.glob(os.path.join(workdir, "eval", f"{name}_step*.json"))
    if not paths:
        sys.exit(f"no {name} results under {workdir}/eval")
    path = max(paths, key=lambda p: int(re.search(r"_step(\d+)\.json$", p).group(1)))
    with open(path) as f:
        return json.load(f)["results"]


def scores(run):
    """{column: value}: zero-shot top-1 / macro AUROC per task, retrieval R@K per dataset."""
    workdir = os.path.join(root, run)
    out = {}
    for task, metrics in latest(workdir, "zero_shot").items():
        for key in ("top1", "macro_auroc"):
            if key in metrics:
                out[f"{task.split(':')[-1]} {key}"] = metrics[key]
    retrieval = latest(workdir, "retrieval")
    for dataset, metrics in retrieval.items():
        prefix = "" if len(retrieval) == 1 else f"{dataset} "
        for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
            if key in metrics:
                out[prefix + key] = metrics[key]
    return out


table = {run: scores(run) for run in runs}
columns = list(table[runs[0]])
print("\n| run | " + " | ".join(columns) + " |")
print("|---" * (len(columns) + 1) + "|")
for run in runs:
    print(f"| {run} | " + " | ".join(f"{table[run][c]:.4f}" for c in columns) + " |")
for option in ("off", "on"):
    chosen = [r for r in runs if r.startswith(option + "_")]
    means = [statistics.mean(table[r][c] for r in chosen) for c in columns]
    print(f"| mean {option} ({len(chosen)}) | " + " | ".join(f"{m:.4f}" for m in means) + " |")
EOF
