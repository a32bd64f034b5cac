#!/usr/bin/env bash
# Transfer demo: CLIP's demo config with the all-MiniLM-L6-v2 text tower (BERT, 6 layers, width
# 384, mean pooling, MiniLM tokenizer), trained twice with identical settings:
#   $ROOT/minilm_init  the text tower starts from the real MiniLM weights (config.init.text)
#   $ROOT/random_init  the same architecture from a random init (--config.init.text=)
# then zero-shot classification and retrieval of both, and one markdown table comparing them.
#
#   scripts/transfer_demo.sh [--config.<field>=<value> ...]   # extra args go to both trainings
#   ROOT=runs/transfer_lr01 scripts/transfer_demo.sh "--config.optim.lr_multipliers=(('^text/', 0.1),)"
#
# Re-running resumes / re-evaluates (the table reads each run's latest eval JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
ROOT="${ROOT:-runs/transfer}"
PY=.venv/bin/python
CONFIG="configs/clip.py:demo,text=minilm"
if [ ! -f data/tfds/synthetic_medical/default/1.0.0/dataset_info.json ]; then
  $PY -m data_prep.synthetic_medical --data_dir data/tfds --config default
fi

train() {  # train <run name> <args...>
  local name="$1" start
  shift
  mkdir -p "$ROOT/$name"
  start=$(date +%s)
  $PY -m medclip_jax.main --config "$CONFIG" --workdir "$ROOT/$name" "$@"
  echo "$(( $(date +%s) - start ))" > "$ROOT/$name/train_wall_s.txt"
  echo "[transfer_demo] $name: training took $(cat "$ROOT/$name/train_wall_s.txt") s"
}

# The control's override goes last so extra args cannot turn the MiniLM init back on.
train minilm_init "$@"
train random_init "$@" --config.init.text=

for name in minilm_init random_init; do
  $PY -m evals.zero_shot --workdir "$ROOT/$name" --config configs/eval.py:demo
  $PY -m evals.retrieval --workdir "$ROOT/$name" --config configs/eval.py:demo
done

$PY - "$ROOT" <<'EOF'
import glob, json, os, re, statistics, sys

root = sys.argv[1]
runs = ("minilm_init", "random_init")


def latest(workdir, name):
    paths = glob.glob(os.path.join(workdir, "eval", f"{name}_step*.json"))
    if not paths:
        sys.exit(f"no {name} results under {workdir}/eval")
    path = max(paths, key=lambda p: int(re.search(r"_step(\d+)\.json$", p).group(1)))
    with open(path) as f:
        return json.load(f)


def train_stats(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in rows if "train/loss" in r]
    step_times = [r["train/step_time_s"] for r in train if "train/step_time_s" in r]
    wall = os.path.join(workdir, "train_wall_s.txt")
    return (train[-1]["train/loss"] if train else float("nan"),
            statistics.median(step_times) if step_times else float("nan"),
            open(wall).read().strip() if os.path.exists(wall) else "?")


zs = {run: latest(os.path.join(root, run), "zero_shot") for run in runs}
rt = {run: latest(os.path.join(root, run), "retrieval") for run in runs}
tasks = list(zs[runs[0]]["results"])
datasets = list(rt[runs[0]]["results"])
header = (["run", "step"] + [f"{t.split(':')[-1]} top-1" for t in tasks]
          + [f"{d}{m}" for d in ([""] if len(datasets) == 1 else [s + " " for s in datasets])
             for m in ("i2t R@1", "i2t R@10", "t2i R@1", "t2i R@10")]
          + ["final train loss", "median s/step", "train wall s"])
print("\n| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for run in runs:
    z, r = zs[run]["results"], rt[run]["results"]
    loss, s_step, wall = train_stats(os.path.join(root, run))
    cells = [run, str(zs[run]["step"])] + [f"{z[t]['top1']:.4f}" if "top1" in z[t]
                                         else f"{z[t].get('mean_auroc', float('nan')):.4f} (AUROC)"
                                         for t in tasks]
    for d in datasets:
        cells += [f"{r[d][k]:.4f}" for k in ("i2t_R@1", "i2t_R@10", "t2i_R@1", "t2i_R@10")]
    cells += [f"{loss:.4f}", f"{s_step:.3f}", wall]
    print("| " + " | ".join(cells) + " |")
EOF
