"""Classification metrics in numpy, with scikit-learn's semantics (sklearn is only the oracle).

* ``top1``: accuracy of the argmax over class scores (two-class tasks too: no threshold).
* ``balanced_accuracy``: mean recall over the classes present in the labels.
* ``macro_f1``: mean F1 over the classes present in the labels or the predictions.
* ``macro_auroc``: mean one-vs-rest AUROC of each class's score column, over the classes that
  have both positives and negatives; ties get mid-ranks (the Mann-Whitney statistic).
"""

import numpy as np


def _rankdata_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.diff(sorted_x) != 0) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def binary_auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve; NaN if only one class is present."""
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets).astype(bool)
    n_pos = int(targets.sum())
    n_neg = len(targets) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rankdata_average(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest scores."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Metrics of class scores [N, C] against integer labels [N]."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if scores.ndim != 2 or len(scores) != len(labels) or len(labels) == 0:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} do not match")
    num_classes = scores.shape[1]
    predictions = np.argmax(scores, axis=1)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_count = confusion.sum(axis=1)
    pred_count = confusion.sum(axis=0)
    tp = np.diag(confusion).astype(np.float64)

    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true_count > 0, tp / true_count, np.nan)
    present = (true_count + pred_count) > 0
    f1_denominator = true_count + pred_count
    f1 = np.where(f1_denominator > 0, 2 * tp / np.maximum(f1_denominator, 1), 0.0)
    aurocs = [binary_auroc(scores[:, c], labels == c) for c in range(num_classes)]
    valid_aurocs = [a for a in aurocs if not np.isnan(a)]
    return {
        "top1": float(np.mean(predictions == labels)),
        "balanced_accuracy": float(np.nanmean(recall)),
        "macro_f1": float(np.mean(f1[present])),
        "macro_auroc": float(np.mean(valid_aurocs)) if valid_aurocs else float("nan"),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "per_class_auroc": [None if np.isnan(a) else float(a) for a in aurocs],
        "num_samples": int(len(labels)),
    }
