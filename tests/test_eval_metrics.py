"""Classification metrics and the zero-shot classifier against scikit-learn and naive loops."""

import numpy as np
import pytest
from sklearn import metrics as skm

from medclip_jax.errors import UserError
from medclip_jax.evaluation import metrics, zero_shot

# The oracle warns about the very edge cases these tests exist to cover.
pytestmark = [pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true"),
              pytest.mark.filterwarnings("ignore:'k' .* greater than or equal")]


def random_case(seed: int, n: int, c: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, c))
    if ties:
        scores = np.round(scores, 1)  # many tied scores within each column and row
    return scores, rng.integers(0, c, size=n)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def assert_matches_sklearn(scores: np.ndarray, labels: np.ndarray) -> dict:
    result = metrics.classification_metrics(scores, labels)
    predictions = scores.argmax(1)
    assert result["top1"] == pytest.approx(skm.accuracy_score(labels, predictions))
    assert result["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels, predictions))
    assert result["macro_f1"] == pytest.approx(
        skm.f1_score(labels, predictions, average="macro", zero_division=0))
    present = [k for k in range(scores.shape[1]) if 0 < np.sum(labels == k) < len(labels)]
    per_class = [skm.roc_auc_score(labels == k, scores[:, k]) for k in present]
    assert result["macro_auroc"] == pytest.approx(np.mean(per_class))
    assert result["num_samples"] == len(labels)
    return result


@pytest.mark.parametrize("seed,n,c,ties", [(0, 50, 2, False), (1, 80, 5, True),
                                           (2, 30, 7, False), (3, 200, 3, True),
                                           (4, 40, 2, True), (5, 25, 12, False)])
def test_matches_sklearn(seed, n, c, ties):
    assert_matches_sklearn(*random_case(seed, n, c, ties))


@pytest.mark.parametrize("seed,c", [(0, 2), (1, 4), (2, 6)])
def test_macro_auroc_on_probabilities_is_sklearn_ovr(seed, c):
    scores, labels = random_case(seed, 120, c, ties=False)
    labels[:c] = np.arange(c)  # sklearn's multi-class OvR needs every class in the labels
    probs = softmax(3.0 * scores)
    result = metrics.classification_metrics(probs, labels)
    if c == 2:
        expected = skm.roc_auc_score(labels, probs[:, 1])
    else:
        expected = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert result["macro_auroc"] == pytest.approx(expected)
    # Argmax metrics do not care whether they get probabilities or raw scores.
    raw = metrics.classification_metrics(scores, labels)
    for key in ("top1", "balanced_accuracy", "macro_f1"):
        assert raw[key] == pytest.approx(result[key])


def test_class_absent_from_predictions_and_from_labels():
    scores = np.array([[3.0, 1, 0, 0, 0], [2, 1, 0, 0, 0], [0, 3, 1, 0, 0], [0, 0, 5, 0, 0],
                       [0, 0, 0, 0, 1], [1, 0, 0, 0, 0]])
    labels = np.array([0, 1, 1, 2, 3, 3])
    # class 3: labelled but never predicted; class 4: predicted but never labelled.
    result = assert_matches_sklearn(scores, labels)
    assert 3 not in scores.argmax(1) and 4 not in labels
    assert result["per_class_recall"][3] == 0.0 and result["per_class_recall"][4] is None
    assert result["per_class_auroc"][4] is None


def test_single_label_class_gives_nan_auroc_but_other_metrics():
    scores, _ = random_case(0, 10, 3, ties=False)
    result = metrics.classification_metrics(scores, np.zeros(10, int))
    assert np.isnan(result["macro_auroc"])
    assert result["balanced_accuracy"] == pytest.approx(np.mean(scores.argmax(1) == 0))


def test_binary_auroc_ties_match_sklearn():
    scores = np.array([0.1, 0.4, 0.4, 0.4, 0.8, 0.8, 0.2])
    targets = np.array([0, 1, 0, 1, 1, 0, 0])
    assert metrics.binary_auroc(scores, targets) == pytest.approx(
        skm.roc_auc_score(targets, scores))
    assert metrics.binary_auroc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    assert np.isnan(metrics.binary_auroc(scores, np.zeros(7)))
    with pytest.raises(ValueError, match="binary"):
        metrics.binary_auroc(scores, np.array([0, 1, 2, 1, 1, 0, 0]))


def test_two_class_decided_by_argmax_not_threshold():
    # Both scores negative: a threshold at 0 (or 0.5) would call everything class 0.
    scores = np.array([[-0.9, -0.1], [-0.2, -0.8], [-0.5, -0.4]])
    result = metrics.classification_metrics(scores, np.array([1, 0, 1]))
    assert result["top1"] == 1.0
    assert metrics.top_k_accuracy(scores, np.array([1, 0, 1]), 1) == 1.0


def test_top_k_accuracy():
    scores, labels = random_case(5, 60, 6, False)
    for k in (1, 3, 6, 10):
        assert metrics.top_k_accuracy(scores, labels, k) == pytest.approx(
            skm.top_k_accuracy_score(labels, scores, k=min(k, 6), labels=range(6)))


def test_top_k_ties_agree_with_argmax():
    scores, labels = random_case(6, 300, 4, ties=True)
    scores = np.round(scores)  # heavy ties
    top1 = metrics.classification_metrics(scores, labels)["top1"]
    assert metrics.top_k_accuracy(scores, labels, 1) == pytest.approx(top1)
    # Label tied with a lower-index class is not in the top 1 but is in the top 2.
    tied = np.array([[1.0, 1.0, 0.0]])
    assert metrics.top_k_accuracy(tied, np.array([1]), 1) == 0.0
    assert metrics.top_k_accuracy(tied, np.array([1]), 2) == 1.0


def test_bad_inputs_are_rejected():
    scores = np.zeros((3, 2))
    with pytest.raises(UserError, match="class indices"):
        metrics.classification_metrics(scores, np.array([0, 2, 1]))
    with pytest.raises(UserError, match="class indices"):
        metrics.classification_metrics(scores, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="must be"):
        metrics.classification_metrics(scores, np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.classification_metrics(np.full((3, 2), np.nan), np.array([0, 1, 1]))


def test_prompt_order_matches_classifier_reshape():
    prompts = zero_shot.format_prompts(["a", "b"], ["x {}", "y {}.", "{} z"])
    assert prompts == ["x a", "y a.", "a z", "x b", "y b.", "b z"]
    with pytest.raises(UserError, match="no"):
        zero_shot.format_prompts(["a"], ["no placeholder"])
    with pytest.raises(UserError):
        zero_shot.format_prompts([], ["{}"])


def test_classifier_is_a_prompt_ensemble_like_a_loop():
    rng = np.random.default_rng(0)
    num_classes, num_templates, dim = 3, 4, 5
    # Flat [C*T, E] embeddings in format_prompts order, reshaped as the eval does.
    flat = rng.normal(size=(num_classes * num_templates, dim)) * rng.uniform(0.5, 9, (12, 1))
    classifier = zero_shot.build_classifier(flat.reshape(num_classes, num_templates, dim))
    assert classifier.shape == (dim, num_classes)
    for c in range(num_classes):
        unit = [flat[c * num_templates + t] / np.linalg.norm(flat[c * num_templates + t])
                for t in range(num_templates)]
        mean = np.mean(unit, axis=0)
        np.testing.assert_allclose(classifier[:, c], mean / np.linalg.norm(mean), rtol=1e-5,
                                   atol=1e-6)  # float32 vs float64 on components near 0
    images = rng.normal(size=(6, dim))
    scores = zero_shot.zero_shot_scores(images, classifier)
    expected = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ classifier
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
