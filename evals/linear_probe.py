"""Linear probe of a checkpoint's frozen image features on every configured classification task.

    python -m evals.linear_probe --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]
        [--config.linear_probe.k_shots="()"] [--config.linear_probe.features=backbone]

For each dataset of ``config.linear_probe.datasets`` (``name[@config]``, no split: the splits
are ``train_split`` / ``validation_split`` / ``test_split``) and each multi-class task of its
metadata (the records and labels that `evals/zero_shot.py` scores, so both evaluate the same
task): an L2-regularised multinomial logistic regression on the images' features, fitted in JAX
with full-batch L-BFGS (`medclip_jax/evaluation/linear_probe.py` has the objective, the
standardisation and the protocol). The L2 strength is the best validation top-1 of
``l2_grid``; the validation split is carved from train (stratified, ``validation_fraction``,
seeded by ``seed``) when the dataset has no split named ``validation_split`` (or it is empty).
The chosen strength is refitted on train + validation (``refit``) and scored on test. k-shot:
for k in ``k_shots``, ``k_shot_seeds`` draws of k training images per class, each with its own
L2 choice on validation, no refit; mean and sample std over the draws.

Result key ``<name>/<test_split>:<task>`` (the zero-shot key of the same test set and task).
Metrics: top1, balanced_accuracy, macro_f1, macro_auroc (softmax probabilities as scores),
per_class_recall / per_class_auroc, num_samples, num_classes, chance_top1, l2 (chosen),
val_top1, num_train, num_val, val_carved (1 if carved from train), iterations, converged;
k-shot ``k<k>/<metric>_mean`` / ``_std`` for the four metrics and ``k<k>/num_train``.

Features (``features``): ``projected`` (default) = the pooled image embedding after the
projection head, the joint space that zero-shot and retrieval score, so probe and zero-shot
differ only in the classifier; ``backbone`` = the image tower's pooled output before the
projection head (what the CLIP paper probes for its ViTs). They are cached as ``.npy`` under
``cache_dir`` (default ``<output_dir>/features``), one file per (dataset, split, dataset
version, feature kind, checkpoint step), the file name ending in a hash of the training config
and the dataset folder, so a second run (another k, another grid) does not embed again.

The evaluation itself is `medclip_jax.evaluation.linear_probe.evaluate(view, data_dir,
config, output_dir)`, which `evals/run_suite.py` calls too.
"""

import re
from typing import Any

from absl import flags

from evals import common
from medclip_jax.evaluation import linear_probe, tables

FLAGS = flags.FLAGS


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: the full probe's metrics, then k-shot top-1 (mean ± std) per k."""
    ks = sorted({int(m.split("/")[0][1:]) for r in results.values() for m in r
                 if re.fullmatch(r"k\d+/top1_mean", m)})
    header = ["task", "n", "top1", "chance", "balanced_acc", "macro_f1", "macro_auroc", "l2",
              *[f"{k}-shot top1" for k in ks]]
    rows = [[name, r["num_samples"], r["top1"], r["chance_top1"], r["balanced_accuracy"],
             r["macro_f1"], r["macro_auroc"], f"{r['l2']:.0e}",
             *[f"{r[f'k{k}/top1_mean']:.3f} ± {r[f'k{k}/top1_std']:.3f}"
               if f"k{k}/top1_mean" in r else "" for k in ks]]
            for name, r in results.items()]
    return tables.markdown_table(header, rows)


def run() -> None:
    loaded, data_dir, output_dir = common.load()
    results = linear_probe.evaluate(loaded, data_dir, FLAGS.config, output_dir)
    common.publish(output_dir, "linear_probe", "Linear probe", loaded.step, results,
                   table(results))


if __name__ == "__main__":
    common.run_binary(run)
