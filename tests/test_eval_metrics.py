"""Classification metrics and zero-shot classifier against scikit-learn and naive loops."""

import numpy as np
import pytest
from sklearn import metrics as skm

from medclip_jax.evaluation import metrics, zero_shot


def random_case(seed: int, n: int, c: int, ties: bool):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, c))
    if ties:
        scores = np.round(scores, 1)
    labels = rng.integers(0, c, size=n)
    return scores, labels


@pytest.mark.parametrize("seed,n,c,ties", [(0, 50, 2, False), (1, 80, 5, True),
                                           (2, 30, 7, False), (3, 200, 3, True)])
def test_matches_sklearn(seed, n, c, ties):
    scores, labels = random_case(seed, n, c, ties)
    result = metrics.classification_metrics(scores, labels)
    predictions = scores.argmax(1)
    assert result["top1"] == pytest.approx(skm.accuracy_score(labels, predictions))
    assert result["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels, predictions))
    assert result["macro_f1"] == pytest.approx(
        skm.f1_score(labels, predictions, average="macro", zero_division=0))
    per_class = [skm.roc_auc_score(labels == k, scores[:, k]) for k in range(c)]
    assert result["macro_auroc"] == pytest.approx(np.mean(per_class))
    assert result["num_samples"] == n


def test_class_absent_from_predictions_and_labels():
    scores = np.array([[3.0, 1, 0, 0], [2, 1, 0, 0], [0, 3, 1, 0], [0, 0, 5, 0]])
    labels = np.array([0, 1, 1, 2])  # class 3: neither label nor prediction
    result = metrics.classification_metrics(scores, labels)
    predictions = scores.argmax(1)
    assert result["macro_f1"] == pytest.approx(
        skm.f1_score(labels, predictions, average="macro", zero_division=0))
    assert result["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels, predictions))
    assert result["per_class_recall"][3] is None
    expected_auroc = np.mean([skm.roc_auc_score(labels == k, scores[:, k]) for k in range(3)])
    assert result["macro_auroc"] == pytest.approx(expected_auroc)


def test_binary_auroc_ties_match_sklearn():
    scores = np.array([0.1, 0.4, 0.4, 0.4, 0.8, 0.8, 0.2])
    targets = np.array([0, 1, 0, 1, 1, 0, 0])
    assert metrics.binary_auroc(scores, targets) == pytest.approx(
        skm.roc_auc_score(targets, scores))
    assert np.isnan(metrics.binary_auroc(scores, np.zeros(7)))


def test_two_class_decided_by_argmax_not_threshold():
    # Both scores negative: a threshold at 0 would call everything negative.
    scores = np.array([[-0.9, -0.1], [-0.2, -0.8], [-0.5, -0.4]])
    result = metrics.classification_metrics(scores, np.array([1, 0, 1]))
    assert result["top1"] == 1.0


def test_top_k_accuracy():
    scores, labels = random_case(5, 60, 6, False)
    for k in (1, 3, 6):
        assert metrics.top_k_accuracy(scores, labels, k) == pytest.approx(
            skm.top_k_accuracy_score(labels, scores, k=k, labels=range(6)))


def test_prompt_order_and_ensembling_match_a_loop():
    prompts = zero_shot.format_prompts(["a", "b"], ["x {}", "y {}", "z {}"])
    assert prompts == ["x a", "y a", "z a", "x b", "y b", "z b"]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2, 3, 4))
    classifier = zero_shot.build_classifier(emb)
    for c in range(2):
        unit = [e / np.linalg.norm(e) for e in emb[c]]
        mean = np.mean(unit, axis=0)
        np.testing.assert_allclose(classifier[:, c], mean / np.linalg.norm(mean), rtol=1e-5)
    images = rng.normal(size=(5, 4))
    scores = zero_shot.zero_shot_scores(images, classifier)
    expected = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ classifier
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
