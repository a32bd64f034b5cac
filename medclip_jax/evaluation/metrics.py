"""Classification metrics in numpy, with scikit-learn's semantics (sklearn is only the oracle).

* ``top1``: accuracy of the argmax over class scores. Two-class tasks are decided by argmax
  too, never by a threshold: zero-shot scores are similarities, not calibrated probabilities.
  Ties go to the lowest class index (``np.argmax``).
* ``balanced_accuracy``: mean recall over the classes present in the labels
  (``sklearn.metrics.balanced_accuracy_score``).
* ``macro_f1``: mean F1 over the classes present in the labels or the predictions
  (``f1_score(average="macro", zero_division=0)``).
* ``macro_auroc``: mean one-vs-rest AUROC of each class's score column, over the classes that
  have both positives and negatives; tied scores get mid-ranks (the Mann-Whitney statistic,
  as ``roc_auc_score``). AUROC depends only on the order of each column, but softmax changes
  that order (a row's probability depends on its other scores): the result is that of the
  scores the caller passes. Given softmax probabilities and every class present in the labels,
  it equals ``roc_auc_score(labels, probs, multi_class="ovr", average="macro")``.
"""

import numpy as np

from medclip_jax.errors import UserError


def _rankdata_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing the mean of their ranks (the Mann-Whitney convention)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    boundaries = np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    mean_rank = (starts + ends + 1) / 2.0  # mean of the ranks start+1 .. end
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def binary_auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC of scores [N] for binary targets [N]; NaN when only one class is present.

    Computed as the Mann-Whitney U statistic with mid-ranks, which equals the trapezoidal area
    under the ROC curve that sklearn integrates, ties included.
    """
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 1 or targets.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be equal 1-D")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be binary (0/1 or bool)")
    targets = targets.astype(bool)
    n_pos = int(targets.sum())
    n_neg = len(targets) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rankdata_average(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _checked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 [N, C] and labels as int64 [N], each label a valid class index."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.ndim != 1 or len(scores) != len(labels) or not len(labels):
        raise ValueError(f"scores {scores.shape} must be [N, C] and labels {labels.shape} [N], "
                         f"N > 0")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    as_int = labels.astype(np.int64)
    if (as_int != labels).any() or as_int.min() < 0 or as_int.max() >= scores.shape[1]:
        bad = labels[(as_int != labels) | (as_int < 0) | (as_int >= scores.shape[1])]
        raise UserError(f"labels must be class indices in [0, {scores.shape[1]}); "
                        f"got {bad[:5].tolist()}")
    return scores, as_int


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest scores.

    Ties are broken toward the lower class index, as argmax does, so k=1 equals ``top1``
    (sklearn's ``top_k_accuracy_score`` breaks them toward the higher index).
    """
    scores, labels = _checked(scores, labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    label_scores = scores[np.arange(len(labels)), labels][:, None]
    columns = np.arange(scores.shape[1])[None, :]
    ahead = (scores > label_scores) | ((scores == label_scores) & (columns < labels[:, None]))
    return float(np.mean(ahead.sum(axis=1) < k))


def _confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return confusion


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Metrics of class scores [N, C] against integer labels [N] (see the module docstring).

    Returns ``top1``, ``balanced_accuracy``, ``macro_f1``, ``macro_auroc`` (floats; AUROC NaN if
    no class has both positives and negatives), ``per_class_recall`` and ``per_class_auroc``
    (length-C lists, None where undefined) and ``num_samples``.
    """
    scores, labels = _checked(scores, labels)
    num_classes = scores.shape[1]
    predictions = np.argmax(scores, axis=1)
    confusion = _confusion(labels, predictions, num_classes)
    true_count = confusion.sum(axis=1)
    pred_count = confusion.sum(axis=0)
    tp = np.diag(confusion).astype(np.float64)

    recall = np.full(num_classes, np.nan)
    in_labels = true_count > 0
    recall[in_labels] = tp[in_labels] / true_count[in_labels]
    # F1 = 2tp / (2tp + fp + fn) = 2tp / (true + predicted); 0 when tp = 0 (zero_division=0).
    seen = (true_count + pred_count) > 0
    f1 = 2.0 * tp[seen] / (true_count + pred_count)[seen]
    aurocs = np.array([binary_auroc(scores[:, c], labels == c) for c in range(num_classes)])
    defined = ~np.isnan(aurocs)
    return {
        "top1": float(np.mean(predictions == labels)),
        "balanced_accuracy": float(np.mean(recall[in_labels])),
        "macro_f1": float(np.mean(f1)),
        "macro_auroc": float(np.mean(aurocs[defined])) if defined.any() else float("nan"),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "per_class_auroc": [None if np.isnan(a) else float(a) for a in aurocs],
        "num_samples": int(len(labels)),
    }
