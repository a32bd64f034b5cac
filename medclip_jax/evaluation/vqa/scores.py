"""VQA scores: exact-match accuracy and the baselines that say what an answer needs.

`vqa_accuracy` is the exact-match accuracy of the argmax answer overall, on closed and on open
questions. `majority_baseline` always answers the train split's most frequent closed answer
(overall answer) and is scored on the test closed questions (all test questions);
`question_prior_baseline` is a blind per-question prior (the most frequent train answer of the
same question text), which shows how much of the accuracy needs the image.
"""

import collections
from typing import Any, Sequence

import numpy as np

from medclip_jax.evaluation.vqa.questions import build_vocabulary

def _mean_or_none(hits: np.ndarray) -> float | None:
    """None for an empty group (shown as missing, never as 0)."""
    return float(np.mean(hits)) if hits.size else None


def vqa_accuracy(predictions: np.ndarray, targets: np.ndarray, closed: np.ndarray
                 ) -> dict[str, Any]:
    """Exact-match accuracy of predicted answer indices against target indices (-1: an answer
    outside the vocabulary, always wrong), overall / closed / open."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    closed = np.asarray(closed, bool)
    if predictions.shape != targets.shape or closed.shape != targets.shape:
        raise ValueError("predictions, targets and closed must have the same shape")
    hits = (predictions == targets) & (targets >= 0)
    return {"accuracy": _mean_or_none(hits), "closed_accuracy": _mean_or_none(hits[closed]),
            "open_accuracy": _mean_or_none(hits[~closed]),
            "num_questions": int(targets.size), "num_closed": int(closed.sum()),
            "num_open": int((~closed).sum()), "num_unseen_answers": int((targets < 0).sum())}


def majority_baseline(train_answers: Sequence[str], train_closed: np.ndarray,
                      test_answers: Sequence[str], test_closed: np.ndarray) -> dict[str, Any]:
    """Always answering the train split's most frequent answer: that of its closed questions
    on the test closed questions, that of all its questions on all test questions."""
    train_closed, test_closed = np.asarray(train_closed, bool), np.asarray(test_closed, bool)
    train_answers, test_answers = np.asarray(train_answers, object), np.asarray(test_answers,
                                                                                 object)
    out: dict[str, Any] = {}
    for name, train_rows, test_rows in (("majority", slice(None), slice(None)),
                                        ("majority_closed", train_closed, test_closed)):
        vocab = build_vocabulary([(a,) for a in train_answers[train_rows]], 1)
        answer = vocab[0] if vocab else None
        out[f"{name}_answer"] = answer
        out[f"{name}_accuracy"] = _mean_or_none(test_answers[test_rows] == answer)
    return out


def question_prior_baseline(train_questions: Sequence[str], train_answers: Sequence[str],
                            test_questions: Sequence[str], test_answers: Sequence[str],
                            test_closed: np.ndarray) -> dict[str, Any]:
    """A blind answerer: the most frequent train answer of the same question text (the train
    split's overall most frequent answer for a question never seen in train). What a head
    could reach from the question alone, without looking at the image."""
    by_question: dict[str, list[tuple[str]]] = collections.defaultdict(list)
    for question, answer in zip(train_questions, train_answers):
        by_question[question].append((answer,))
    fallback = build_vocabulary([(a,) for a in train_answers], 1)
    prior = {q: build_vocabulary(answers, 1)[0] for q, answers in by_question.items()}
    hits = np.asarray([prior.get(q, fallback[0] if fallback else None) == a
                       for q, a in zip(test_questions, test_answers)], bool)
    test_closed = np.asarray(test_closed, bool)
    return {"question_prior_accuracy": _mean_or_none(hits),
            "question_prior_closed_accuracy": _mean_or_none(hits[test_closed])}
