"""One markdown table over training runs: first/last train loss and the latest eval results.

    python scripts/summarize_runs.py runs/clip_demo runs/slip_demo ...
"""

import glob
import json
import os
import sys


def train_losses(workdir: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [row["train/loss"] for row in rows if "train/loss" in row]


def latest_results(workdir: str, name: str) -> dict:
    paths = glob.glob(os.path.join(workdir, "eval", f"{name}_step*.json"))
    if not paths:
        return {}
    latest = max(paths, key=lambda p: int(p.rsplit("step", 1)[1].split(".")[0]))
    with open(latest) as f:
        return json.load(f)["results"]


def row(workdir: str) -> str:
    losses = train_losses(workdir)
    zero_shot = latest_results(workdir, "zero_shot")
    retrieval = next(iter(latest_results(workdir, "retrieval").values()), {})
    top1 = [f"{v['top1']:.3f}" for _, v in sorted(zero_shot.items())]
    recall = [f"{retrieval[k]:.3f}" if k in retrieval else "-"
              for k in ("i2t_R@10", "t2i_R@10")]
    return (f"| {os.path.basename(workdir.rstrip('/'))} | {losses[0]:.3f} | {losses[-1]:.3f} | "
            f"{' / '.join(top1) or '-'} | {' | '.join(recall)} |")


def main(workdirs: list[str]) -> None:
    print("| run | first loss | last loss | zero-shot top-1 (per task) | i2t R@10 | t2i R@10 |")
    print("|---|---|---|---|---|---|")
    for workdir in workdirs:
        print(row(workdir))


if __name__ == "__main__":
    main(sys.argv[1:])
